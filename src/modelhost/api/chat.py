"""`POST /v1/chat/completions`: parse, plan, run through the pipeline, render JSON or SSE."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from modelhost.api import generation as gen
from modelhost.api.deps import app_state, principal
from modelhost.auth import Principal
from modelhost.engine import ChoiceFinished, TextDelta
from modelhost.engine.base import TokenLogprob
from modelhost.engine.chat_template import ChatTemplateError
from modelhost.engine.registry import ServedModel
from modelhost.errors import APIError, InvalidRequest
from modelhost.ids import new_id
from modelhost.pipeline import GenerationPlan, GenerationRun
from modelhost.protocol import convert
from modelhost.protocol.chat import ChatCompletion, ChatCompletionRequest
from modelhost.protocol.common import ErrorResponse

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(principal)])


def _tokenize_chat(served: ServedModel, request: ChatCompletionRequest) -> list[int]:
    messages = convert.chat_messages(request)
    try:
        text = served.engine.render_chat(messages)
    except ChatTemplateError as exc:
        raise InvalidRequest(str(exc), param="messages") from exc
    return served.engine.tokenize(text)


async def plan_chat(request: Request, body: ChatCompletionRequest, who: Principal) -> GenerationPlan:
    """Validate what pydantic cannot (limits that depend on the model), tokenize, size the completion."""
    state = app_state(request)
    if body.ignored_fields():
        logger.info("chat.completions: ignoring unsupported fields %s", ", ".join(body.ignored_fields()))
    served = state.registry.get(body.model)
    n = body.n or 1
    gen.check_n(served, n, state.settings.max_n)
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            param="top_logprobs",
            code="invalid_value",
        )
    prompt = await run_in_threadpool(_tokenize_chat, served, body)
    max_tokens = gen.completion_budget(served, len(prompt), body.max_completion_tokens or body.max_tokens, param="messages")
    sampling = convert.sampling_params(
        body,
        max_tokens=max_tokens,
        n_vocab=served.engine.vocab_size,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    return GenerationPlan(
        principal=who,
        model=served,
        operation="chat.completions",
        request_id=new_id("chatcmpl-"),
        prompt_tokens=prompt,
        sampling=sampling,
        n=n,
    )


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, who: Principal = Depends(principal)
) -> Response:
    plan = await plan_chat(request, body, who)
    run = app_state(request).pipeline.run(plan)
    await run.__aenter__()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return gen.SettledStreamingResponse(_stream(run, include_usage), settle=run.settle)
    try:
        result = await gen.until_disconnect(request, gen.collect(run))
    except gen.ClientDisconnected:
        return Response(status_code=499)  # nobody is listening; the ledger has the partial usage
    finally:
        await run.settle()
    return JSONResponse(_completion(plan, result))


def _logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, object]:
    def one(piece: bytes, logprob: float) -> dict[str, object]:
        return {"token": gen.token_text(piece), "logprob": logprob, "bytes": list(piece)}

    content = [
        {**one(t.piece, t.logprob or 0.0), "top_logprobs": [one(p, lp) for _, p, lp in t.top]} for t in tokens
    ]
    return {"content": content, "refusal": None}


def _completion(plan: GenerationPlan, result: gen.RunResult) -> dict[str, object]:
    wants_logprobs = plan.sampling.logprobs is not None
    return {
        "id": plan.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model.id,
        "system_fingerprint": plan.model.fingerprint,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": choice.text, "refusal": None},
                "logprobs": _logprobs(choice.logprobs) if wants_logprobs else None,
                "finish_reason": choice.finish_reason,
            }
            for i, choice in enumerate(result.choices)
        ],
        "usage": gen.usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens),
    }


async def _stream(run: GenerationRun, include_usage: bool) -> AsyncIterator[bytes]:
    plan = run.plan
    created = int(time.time())
    wants_logprobs = plan.sampling.logprobs is not None

    def chunk(choices: list[dict[str, object]], **extra: object) -> bytes:
        payload: dict[str, object] = {
            "id": plan.request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.model.id,
            "system_fingerprint": plan.model.fingerprint,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = None
        payload.update(extra)
        return gen.sse(payload)

    def choice(index: int, delta: dict[str, object], finish: str | None = None, logprobs: object = None) -> dict[str, object]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    try:
        for i in range(plan.n):
            yield chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})])
        async for event in run.events():
            if isinstance(event, TextDelta):
                logprobs = _logprobs(event.logprobs) if wants_logprobs else None
                yield chunk([choice(event.index, {"content": event.text}, logprobs=logprobs)])
            elif isinstance(event, ChoiceFinished):
                yield chunk([choice(event.index, {}, event.reason)])
        if include_usage:
            yield chunk([], usage=gen.usage(run.prompt_tokens, run.completion_tokens, run.cached_tokens))
        yield gen.SSE_DONE
    except APIError as exc:
        # Headers are gone already: report the failure as an error event, then close.
        yield gen.sse(exc.body())
    finally:
        await run.settle()
