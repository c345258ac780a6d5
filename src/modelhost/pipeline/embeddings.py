"""The embeddings path: reserve limits → run the model on the embedder's worker → settle the limits
and record the usage, exactly once.

Like `GenerationRun`, the ledger row is written pending before the model runs and settled
whether the request completed, failed or was cancelled by a disconnect, shielded from that
cancellation and retried by `LedgerWriter` until it is durable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import anyio
import numpy as np

from modelhost.auth import Principal
from modelhost.engine.embedding.base import EmbedderFailed, EmbedderOverloaded
from modelhost.engine.registry import ServedModel
from modelhost.errors import ServerError, ServiceUnavailable
from modelhost.limits import Admission, Limiter, Reservation
from modelhost.pipeline.ledger_writer import LedgerWriter
from modelhost.store import UsageEntry
from modelhost.store.ledger import PENDING

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingPlan:
    """Everything decided before the model runs: who pays, which model, which framed sequences."""

    principal: Principal
    model: ServedModel
    request_id: str
    sequences: Sequence[Sequence[int]]
    admission: Admission  # the request as counted before its inputs were tokenized (pipeline/admission.py)
    operation: str = "embeddings"

    @property
    def prompt_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # (inputs, dimensions) float32 unit vectors, in input order
    rate_limit_headers: dict[str, str]  # OpenAI's x-ratelimit-* as the limits stood at admission


class EmbeddingPipeline:
    """``result = await EmbeddingPipeline(ledger_writer, limiter).run(plan)``."""

    def __init__(self, ledger: LedgerWriter, limiter: Limiter) -> None:
        self._ledger = ledger
        self._limiter = limiter

    async def run(self, plan: EmbeddingPlan) -> EmbeddingResult:
        embedder = plan.model.embedder
        assert embedder is not None, "plan an embeddings run only for a model with an embedder"
        with anyio.CancelScope(shield=True):  # what the limit store took must come back to us
            reservation = await self._limiter.reserve(
                plan.admission,
                request_id=plan.request_id,
                prompt_tokens=plan.prompt_tokens,
                max_tokens=0,
                n=1,
            )
            try:  # the pending row exists before the model runs: a crash cannot lose it
                await self._ledger.admit(_entry(plan, PENDING))
            except BaseException:
                await self._limiter.release(reservation)
                raise
        outcome = "cancelled"
        try:
            vectors = await embedder.embed(plan.sequences)
            outcome = "completed"
            return EmbeddingResult(vectors, dict(reservation.headers))
        except EmbedderOverloaded as exc:
            outcome = ""  # nothing ran: the reservation goes back, nothing is recorded
            raise ServiceUnavailable(
                "The server is overloaded; retry shortly.", code="overloaded", headers={"Retry-After": "1"}
            ) from exc
        except EmbedderFailed as exc:
            outcome = "failed"
            logger.error("embeddings %s failed in the model: %s", plan.request_id, exc)
            raise ServerError("The model failed while embedding; retry the request.") from exc
        except Exception:
            outcome = "failed"
            raise
        finally:
            # Shielded: a disconnect cancels the request's task, but its usage must still be written.
            with anyio.CancelScope(shield=True):
                await self._settle(plan, reservation, outcome)

    async def _settle(self, plan: EmbeddingPlan, reservation: Reservation, outcome: str) -> None:
        if not outcome:
            await self._ledger.discard(plan.request_id)
            await self._limiter.release(reservation)
            return
        await self._limiter.settle(reservation, prompt_tokens=plan.prompt_tokens, completion_tokens=0)
        # Retried until durable; past the wait it is kept and written in the background. The JSON
        # answer is sent either way: withholding it would only make the SDK run and bill it again.
        await self._ledger.settle(_entry(plan, outcome))


def _entry(plan: EmbeddingPlan, outcome: str) -> UsageEntry:
    return UsageEntry(
        request_id=plan.request_id,
        created_at=datetime.now(timezone.utc),
        organization_id=plan.principal.organization_id,
        project_id=plan.principal.project_id,
        user_id=plan.principal.user_id,
        api_key_id=plan.principal.key_id,
        model=plan.model.id,
        operation=plan.operation,
        prompt_tokens=plan.prompt_tokens,
        completion_tokens=0,
        outcome=outcome,
    )
