"""The embeddings path: open the request's settlement → run the model on the embedder's worker →
settle it, exactly once (`settlement.py`, the same account every generation keeps)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelhost.auth import Principal
from modelhost.engine.embedding.base import EmbedderFailed, EmbedderOverloaded
from modelhost.engine.registry import ServedModel
from modelhost.limits import Admission
from modelhost.pipeline.engine_errors import client_error
from modelhost.pipeline.generation import Pipeline
from modelhost.pipeline.settlement import Charge

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


async def embed(pipeline: Pipeline, plan: EmbeddingPlan) -> EmbeddingResult:
    """Embed `plan`'s sequences under one settlement: a disconnect (cancellation) settles "cancelled"."""
    embedder = plan.model.embedder
    assert embedder is not None, "plan an embeddings run only for a model with an embedder"
    settlement = pipeline.settlement(Charge(plan.principal, plan.model.id, plan.operation, plan.request_id, plan.admission))
    await settlement.open(prompt_tokens=plan.prompt_tokens, max_tokens=0, n=1)
    outcome = "cancelled"
    try:
        vectors = await embedder.embed(plan.sequences)
        outcome = "completed"
        return EmbeddingResult(vectors, settlement.headers)
    except EmbedderOverloaded as exc:
        await settlement.withdraw()  # nothing ran: the reservation goes back, nothing is recorded
        raise client_error(exc) from exc
    except EmbedderFailed as exc:
        outcome = "failed"
        logger.error("embeddings %s failed in the model: %s", plan.request_id, exc)
        raise client_error(exc) from exc
    except Exception:
        outcome = "failed"
        raise
    finally:
        # The JSON answer is sent even when the row waits for the database: withholding it would only
        # make the SDK run and bill it again. A no-op after `withdraw`.
        await settlement.close(outcome, prompt_tokens=plan.prompt_tokens, completion_tokens=0)
