"""The one generation path: reserve limits, admit to the ledger, submit to the engine, stream
events, and settle the limits and the ledger exactly once.

Chat and legacy completions both come through `GenerationPipeline.run`; the order
reserve → admit (pending ledger row) → generate → settle limits → settle the row is written only
here, and the settling happens on success, error and disconnect (`ledger_writer.py` says what a
crash or a database error in between leaves).
"""

from __future__ import annotations

import logging
import time
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
    TextDelta,
    UpstreamInput,
    UsageReported,
)
from modelhost.engine.registry import ServedModel
from modelhost.errors import ServerError, ServiceUnavailable
from modelhost.limits import Admission, Limiter, Reservation
from modelhost.observability import GenerationObserver, GenerationReport
from modelhost.pipeline.ledger_writer import LedgerWriter
from modelhost.store import UsageEntry
from modelhost.store.ledger import PENDING

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
    admission: Admission  # the request as counted before it was planned (pipeline/admission.py)
    upstream: UpstreamInput | None = None  # for an engine that forwards requests (prompt_tokens is empty)
    part: int = 0  # this prompt's index in a multi-prompt completion; every part shares the one admission

    def __post_init__(self) -> None:
        assert (self.admission.principal, self.admission.model) == (self.principal, self.model.id), (
            "a plan runs under the admission of its own caller and model"
        )


class GenerationRun:
    """``async with pipeline.run(plan) as run: async for event in run.events(): ...``"""

    def __init__(
        self, plan: GenerationPlan, ledger: LedgerWriter, observer: GenerationObserver | None = None, *, limiter: Limiter
    ) -> None:
        self.plan = plan
        self._ledger = ledger
        self._limiter = limiter
        self._reservation: Reservation | None = None
        self._observer = observer
        self._submitted = self._first_text = self._last_text = 0.0  # perf_counter times, for TTFT and per-token latency
        self._generation = None
        self._finished_choices = 0
        self._reported: UsageReported | None = None  # the model server's own counts, preferred over ours
        self._failed = False
        self._settled = False
        self.recorded = False  # the ledger row is durable with its final usage

    async def __aenter__(self) -> GenerationRun:
        request = GenerationRequest(
            request_id=self.plan.request_id,
            prompt_tokens=self.plan.prompt_tokens,
            sampling=self.plan.sampling,
            n=self.plan.n,
            cache_scope=self.plan.principal.organization_id,
            upstream=self.plan.upstream,
            part=self.plan.part,
            project=self.plan.principal.project_id,
        )
        with anyio.CancelScope(shield=True):  # what the limit store took must come back to us
            self._reservation = await self._limiter.reserve(
                self.plan.admission,
                request_id=self.plan.request_id,
                prompt_tokens=self.prompt_tokens,
                max_tokens=self.plan.sampling.max_tokens,
                n=self.plan.n,
            )
            try:  # the pending row (prompt tokens) exists before any engine work: a crash cannot lose it
                await self._ledger.admit(self._entry(PENDING))
            except BaseException:
                await self._limiter.release(self._reservation)
                raise
        try:
            self._generation = self.plan.model.engine.submit(request)
            self._submitted = time.perf_counter()
            self._ledger.track(self.plan.request_id, lambda: self.completion_tokens)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._ledger.discard(self.plan.request_id)
                await self._limiter.release(self._reservation)
            if isinstance(exc, EngineOverloaded):
                raise ServiceUnavailable(
                    "The server is overloaded; retry shortly.", code="overloaded", headers={"Retry-After": "1"}
                ) from exc
            raise
        return self

    @property
    def rate_limit_headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers as the limits stood when this run was admitted."""
        return dict(self._reservation.headers) if self._reservation is not None else {}

    async def events(self) -> AsyncIterator[EngineEvent]:
        assert self._generation is not None, "use inside `async with`"
        try:
            async for event in self._generation:
                if isinstance(event, UsageReported):
                    self._reported = event
                    continue
                if isinstance(event, ChoiceFinished):
                    self._finished_choices += 1
                elif isinstance(event, TextDelta):
                    self._last_text = time.perf_counter()
                    self._first_text = self._first_text or self._last_text
                yield event
        except EngineFailed as exc:
            self._failed = True
            logger.error("generation %s failed in the engine: %s", self.plan.request_id, exc)
            raise (exc.client_error or ServerError("The model failed while generating; retry the request.")) from exc

    @property
    def prompt_tokens(self) -> int:
        if self._reported is not None:
            return self._reported.prompt_tokens
        return self.plan.upstream.prompt_estimate if self.plan.upstream is not None else len(self.plan.prompt_tokens)

    @property
    def completion_tokens(self) -> int:
        if self._reported is not None:
            return self._reported.completion_tokens
        return self._generation.completion_tokens if self._generation is not None else 0

    @property
    def cached_tokens(self) -> int:
        if self._reported is not None:
            return self._reported.cached_tokens
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
        if self._observer is not None:
            self._observe(outcome)
        entry = self._entry(outcome)
        # Shielded: a disconnect cancels the request's task, but its usage must still be written.
        with anyio.CancelScope(shield=True):
            if self._reservation is not None:
                try:
                    await self._limiter.settle(
                        self._reservation, prompt_tokens=entry.prompt_tokens, completion_tokens=entry.completion_tokens
                    )
                except Exception:
                    # The ledger row below is the record of truth (counters are rebuilt from it);
                    # a limit store that failed to settle must not cost us that row.
                    logger.exception("could not settle the limits of %s", entry.request_id)
            # Retried until durable (or kept for the background to write): a stream's [DONE] waits on this.
            self.recorded = await self._ledger.settle(entry)

    def _entry(self, outcome: str) -> UsageEntry:
        return UsageEntry(
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

    def _observe(self, outcome: str) -> None:
        assert self._observer is not None
        ttft = self._first_text - self._submitted if self._first_text else None
        later = self.completion_tokens - self.plan.n  # tokens after each choice's first
        per_token = (self._last_text - self._first_text) / later if self._first_text and later > 0 else None
        self._observer.generation_settled(
            GenerationReport(
                model=self.plan.model.id,
                operation=self.plan.operation,
                outcome=outcome,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                time_to_first_token=ttft,
                time_per_output_token=per_token,
            )
        )


class GenerationPipeline:
    def __init__(self, ledger: LedgerWriter, observer: GenerationObserver | None = None, *, limiter: Limiter) -> None:
        self._ledger = ledger
        self._observer = observer
        self._limiter = limiter

    def run(self, plan: GenerationPlan) -> GenerationRun:
        return GenerationRun(plan, self._ledger, self._observer, limiter=self._limiter)

