"""The one generation path: settle-open (reserve limits, pending ledger row), submit to the
engine, stream events, and settle exactly once (`settlement.py`).

Chat, legacy completions and every later generating endpoint come through `Pipeline.run`
with a plan from `planning.py`; the settling happens on success, error and disconnect
(`ledger_writer.py` says what a crash or a database error in between leaves).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from modelhost.auth import Principal
from modelhost.engine.base import (
    ChoiceFinished,
    EngineEvent,
    EngineError,
    EngineFailed,
    Generation,
    GenerationRequest,
    Priority,
    SamplingParams,
    TextDelta,
    UpstreamInput,
    UsageReported,
)
from modelhost.engine.registry import ServedModel
from modelhost.limits import Admission, Limiter
from modelhost.observability import SettlementObserver
from modelhost.pipeline.engine_errors import client_error
from modelhost.pipeline.ledger_writer import LedgerWriter
from modelhost.pipeline.settlement import Charge, Settlement, Timing

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

    @property
    def charge(self) -> Charge:
        return Charge(self.principal, self.model.id, self.operation, self.request_id, self.admission)


class GenerationRun:
    """``async with pipeline.run(plan) as run: async for event in run.events(): ...``"""

    def __init__(self, plan: GenerationPlan, settlement: Settlement) -> None:
        self.plan = plan
        self._settlement = settlement
        self._submitted = self._first_text = self._last_text = 0.0  # perf_counter times, for TTFT and per-token latency
        self._generation: Generation | None = None
        self._finished_choices = 0
        self._reported: UsageReported | None = None  # the model server's own counts, preferred over ours
        self._failed = False

    async def __aenter__(self) -> GenerationRun:
        plan = self.plan
        assert plan.model.engine is not None, "plan a generation only for a model that generates"
        request = GenerationRequest(
            request_id=plan.request_id,
            prompt_tokens=plan.prompt_tokens,
            sampling=plan.sampling,
            n=plan.n,
            cache_scope=plan.principal.organization_id,
            upstream=plan.upstream,
            part=plan.part,
            project=plan.principal.project_id,
            priority=Priority.BATCH if plan.principal.is_batch else Priority.INTERACTIVE,
        )
        await self._settlement.open(prompt_tokens=self.prompt_tokens, max_tokens=plan.sampling.max_tokens, n=plan.n)
        try:
            self._generation = plan.model.engine.submit(request)
            self._submitted = time.perf_counter()
        except BaseException as exc:
            await self._settlement.withdraw()
            if isinstance(exc, EngineError):
                raise client_error(exc) from exc
            raise
        self._settlement.track(lambda: self.completion_tokens)
        return self

    @property
    def rate_limit_headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers as the limits stood when this run was admitted."""
        return self._settlement.headers

    @property
    def recorded(self) -> bool:
        """The ledger row is durable with its final usage."""
        return self._settlement.recorded

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
            raise client_error(exc) from exc

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
        """Stop the generation if still running and settle its account; only the first call acts."""
        if self._generation is None or self._settlement.closed:
            return
        self._generation.cancel()  # no-op when it already ended
        if self._finished_choices == self.plan.n:
            outcome = "completed"
        elif self._failed:
            outcome = "failed"
        else:
            outcome = "cancelled"
        await self._settlement.close(
            outcome, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, timing=self._timing()
        )

    def _timing(self) -> Timing:
        ttft = self._first_text - self._submitted if self._first_text else None
        later = self.completion_tokens - self.plan.n  # tokens after each choice's first
        per_token = (self._last_text - self._first_text) / later if self._first_text and later > 0 else None
        return Timing(ttft, per_token)


class Pipeline:
    """Runs plans and keeps the account of every model request (generations and embeddings alike)."""

    def __init__(self, ledger: LedgerWriter, observer: SettlementObserver | None = None, *, limiter: Limiter) -> None:
        self._ledger = ledger
        self._observer = observer
        self._limiter = limiter

    def settlement(self, charge: Charge) -> Settlement:
        """The account of one request (`settlement.py`), for any endpoint that runs a model."""
        return Settlement(charge, limiter=self._limiter, ledger=self._ledger, observer=self._observer)

    def run(self, plan: GenerationPlan) -> GenerationRun:
        return GenerationRun(plan, self.settlement(plan.charge))
