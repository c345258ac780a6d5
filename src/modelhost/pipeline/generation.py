"""The one generation path: submit to the engine, stream events, and settle the ledger exactly once.

Chat and (later) legacy completions both come through `GenerationPipeline.run`; the order
generate → record is written only here, and the record happens on success, error and disconnect.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType

import anyio

from modelhost.auth import Principal
from modelhost.engine.base import (
    ChoiceFinished,
    EngineEvent,
    EngineFailed,
    EngineOverloaded,
    GenerationRequest,
    SamplingParams,
)
from modelhost.engine.registry import ServedModel
from modelhost.errors import ServerError, ServiceUnavailable
from modelhost.store import UsageEntry, UsageLedger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationPlan:
    """Everything decided before the engine runs: who pays, which model, what to generate."""

    principal: Principal
    model: ServedModel
    operation: str
    request_id: str
    prompt_tokens: Sequence[int]
    sampling: SamplingParams
    n: int


class GenerationRun:
    """``async with pipeline.run(plan) as run: async for event in run.events(): ...``"""

    def __init__(self, plan: GenerationPlan, ledger: UsageLedger) -> None:
        self.plan = plan
        self._ledger = ledger
        self._generation = None
        self._finished_choices = 0
        self._failed = False
        self._settled = False

    async def __aenter__(self) -> GenerationRun:
        request = GenerationRequest(
            request_id=self.plan.request_id,
            prompt_tokens=self.plan.prompt_tokens,
            sampling=self.plan.sampling,
            n=self.plan.n,
            cache_scope=self.plan.principal.organization_id,
        )
        try:
            self._generation = self.plan.model.engine.submit(request)
        except EngineOverloaded as exc:
            raise ServiceUnavailable(
                "The server is overloaded; retry shortly.", code="overloaded", headers={"Retry-After": "1"}
            ) from exc
        return self

    async def events(self) -> AsyncIterator[EngineEvent]:
        assert self._generation is not None, "use inside `async with`"
        try:
            async for event in self._generation:
                if isinstance(event, ChoiceFinished):
                    self._finished_choices += 1
                yield event
        except EngineFailed as exc:
            self._failed = True
            logger.error("generation %s failed in the engine: %s", self.plan.request_id, exc)
            raise ServerError("The model failed while generating; retry the request.") from exc

    @property
    def prompt_tokens(self) -> int:
        return len(self.plan.prompt_tokens)

    @property
    def completion_tokens(self) -> int:
        return self._generation.completion_tokens if self._generation is not None else 0

    @property
    def cached_tokens(self) -> int:
        return self._generation.cached_tokens if self._generation is not None else 0

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.settle()

    async def settle(self) -> None:
        """Stop the generation if still running and write its ledger row; only the first call acts."""
        if self._generation is None or self._settled:
            return
        self._settled = True
        self._generation.cancel()  # no-op when it already ended
        if self._finished_choices == self.plan.n:
            outcome = "completed"
        elif self._failed:
            outcome = "failed"
        else:
            outcome = "cancelled"
        entry = UsageEntry(
            request_id=self.plan.request_id,
            created_at=datetime.now(timezone.utc),
            organization_id=self.plan.principal.organization_id,
            project_id=self.plan.principal.project_id,
            user_id=self.plan.principal.user_id,
            api_key_id=self.plan.principal.key_id,
            model=self.plan.model.id,
            operation=self.plan.operation,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            outcome=outcome,
        )
        # Shielded: a disconnect cancels the request's task, but its usage must still be written.
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._ledger.record, entry)
            except Exception:
                logger.exception(
                    "could not record usage of %s (org %s, %d+%d tokens)",
                    entry.request_id,
                    entry.organization_id,
                    entry.prompt_tokens,
                    entry.completion_tokens,
                )


class GenerationPipeline:
    def __init__(self, ledger: UsageLedger) -> None:
        self._ledger = ledger

    def run(self, plan: GenerationPlan) -> GenerationRun:
        return GenerationRun(plan, self._ledger)

