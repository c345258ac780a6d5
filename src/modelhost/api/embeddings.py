"""`POST /v1/embeddings`: parse, check the inputs against the model's limits, embed, render."""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from modelhost.api import generation as gen
from modelhost.api.deps import app_state, principal
from modelhost.auth import Principal
from modelhost.config import Settings
from modelhost.engine.embedding import Embedder
from modelhost.engine.registry import EMBEDDINGS
from modelhost.errors import ContextLengthExceeded, InvalidRequest
from modelhost.pipeline.admission import admitted
from modelhost.pipeline.embeddings import EmbeddingPlan, embed
from modelhost.protocol.common import ErrorResponse
from modelhost.protocol.embeddings import EmbeddingList, EmbeddingRequest

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(principal)])

# A string longer than this many characters per allowed token is refused before it is tokenized:
# no real text packs that many characters into each token, and tokenizing it would cost time.
CHARS_PER_TOKEN_CAP = 64


def _invalid_input(message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param="input", code=code)


def _check_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise _invalid_input("'input' cannot be an empty array: send at least one string or token array.")
    if count > settings.embedding_max_inputs:
        raise _invalid_input(
            f"'input' has {count} items, more than the {settings.embedding_max_inputs} inputs allowed per "
            "request: split it into several requests."
        )


def _sequences(embedder: Embedder, body: EmbeddingRequest, settings: Settings) -> list[list[int]]:
    """Each input framed as the model reads it; 400 for empty, oversized or out-of-vocabulary inputs."""
    texts, arrays = body.texts_or_tokens()
    _check_count(len(texts) + len(arrays), settings)
    limit = embedder.max_input_tokens
    char_cap = limit * CHARS_PER_TOKEN_CAP
    for i, text in enumerate(texts):  # sizes first: nothing is tokenized if any input is hopeless
        if not text:
            raise _invalid_input(f"input[{i}] is an empty string; every input must have some text.")
        if len(text) > char_cap:
            raise ContextLengthExceeded(
                f"input[{i}] has {len(text)} characters, more than fit in this model's maximum context "
                f"length of {limit} tokens. Please shorten it.",
                param="input",
            )
    for i, tokens in enumerate(arrays):
        if not tokens:
            raise _invalid_input(f"input[{i}] is an empty token array; every input must have some tokens.")
        if len(tokens) > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, however input[{i}] has "
                f"{len(tokens)} tokens. Please shorten it.",
                param="input",
            )
        bad = next((t for t in tokens if not 0 <= t < embedder.vocab_size), None)
        if bad is not None:
            raise _invalid_input(
                f"input[{i}] has token id {bad}, outside this model's vocabulary (0 to {embedder.vocab_size - 1})."
            )
    sequences: list[list[int]] = []
    total = 0
    contents: Sequence[str | Sequence[int]] = texts or arrays  # a request holds texts or token arrays, never both
    for i, content in enumerate(contents):
        framed = embedder.frame(embedder.tokenize(content) if isinstance(content, str) else content)
        if not framed:
            raise _invalid_input(f"input[{i}] has no tokens for this model.")
        if len(framed) > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, however input[{i}] has "
                f"{len(framed)} tokens. Please shorten it.",
                param="input",
            )
        total += len(framed)
        if total > settings.embedding_max_request_tokens:
            raise _invalid_input(
                f"The inputs of this request have more than {settings.embedding_max_request_tokens} tokens in "
                "all: send fewer or shorter inputs per request.",
                code="max_tokens_per_request",
            )
        sequences.append(framed)
    return sequences


def _check_dimensions(model_id: str, embedder: Embedder, dimensions: int | None) -> None:
    # Our models were not trained to be truncated (no Matryoshka loss): like OpenAI for
    # text-embedding-ada-002, only the model's own size is accepted.
    if dimensions is not None and dimensions != embedder.dimensions:
        raise InvalidRequest(
            f"The model `{model_id}` does not support specifying dimensions other than its own {embedder.dimensions}.",
            param="dimensions",
            code="invalid_value",
        )


def _render(plan: EmbeddingPlan, vectors: np.ndarray, encoding_format: str | None) -> dict[str, object]:
    if encoding_format == "base64":
        little_endian = vectors.astype("<f4", copy=False)
        embeddings: list[object] = [base64.b64encode(row.tobytes()).decode("ascii") for row in little_endian]
    else:
        embeddings = vectors.tolist()  # each float32 exactly, as a JSON double
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
        "model": plan.model.id,
        "usage": {"prompt_tokens": plan.prompt_tokens, "total_tokens": plan.prompt_tokens},
    }


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingList,
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def create_embeddings(body: EmbeddingRequest, request: Request, who: Principal = Depends(principal)) -> Response:
    state = app_state(request)
    if body.ignored_fields():
        logger.info("embeddings: ignoring unsupported fields %s", ", ".join(body.ignored_fields()))
    admission_of = admitted(state.registry, state.limiter, who, body.model, EMBEDDINGS, id_prefix="embd-")
    async with admission_of as (served, admission):  # counted (429 here) before any input is tokenized
        embedder = served.embedder
        assert embedder is not None, "the registry returns only models that embed"
        _check_dimensions(served.id, embedder, body.dimensions)
        sequences = await run_in_threadpool(_sequences, embedder, body, state.settings)
        plan = EmbeddingPlan(
            principal=who, model=served, request_id=admission.request_id, sequences=sequences, admission=admission
        )
        try:
            result = await gen.until_disconnect(request, embed(state.pipeline, plan))
        except gen.ClientDisconnected:
            return Response(status_code=499)  # nobody is listening; the ledger has the row
    return JSONResponse(_render(plan, result.vectors, body.encoding_format), headers=result.rate_limit_headers)
