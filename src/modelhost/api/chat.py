"""`POST /v1/chat/completions`: convert the request, plan and run it through the pipeline, render JSON or SSE."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from modelhost.api import generation as gen
from modelhost.api.deps import app_state, principal
from modelhost.api.state import AppState
from modelhost.auth import Principal
from modelhost.chat_completions import stored
from modelhost.engine.base import EngineEvent, TokenLogprob
from modelhost.engine.registry import CHAT
from modelhost.errors import APIError
from modelhost.pipeline import GenerationRun
from modelhost.pipeline.admission import admitted
from modelhost.pipeline.assembly import Assembler, CallPiece, ChoiceEnd, ChoiceResult, ContentPiece, RunResult
from modelhost.pipeline.planning import ChatPlan, plan_chat
from modelhost.protocol import convert
from modelhost.protocol.chat import ChatCompletion, ChatCompletionRequest
from modelhost.protocol.common import ErrorResponse

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(principal)])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, who: Principal = Depends(principal)
) -> Response:
    state = app_state(request)
    if body.ignored_fields():
        logger.info("chat.completions: ignoring unsupported fields %s", ", ".join(body.ignored_fields()))
    admission_of = admitted(state.registry, state.limiter, who, body.model, CHAT, id_prefix="chatcmpl-")
    async with admission_of as (served, admission):  # counted (429 here) before any planning work
        chat = await plan_chat(convert.chat_input(body), served, admission, max_n=state.settings.max_n)
        run = state.pipeline.run(chat.generation)
        await run.__aenter__()
    keep = _keeper(state, who, body) if body.store else None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await gen.stream_response(run, lambda events: _stream(run, events, chat, include_usage, keep))
    result = await gen.collected(request, run, chat.tools)
    if result is None:
        return Response(status_code=499)
    completion = _completion(chat, result)
    if keep is not None:
        await keep(completion)
    return JSONResponse(completion, headers=run.rate_limit_headers)


Keeper = Callable[[dict[str, object]], Awaitable[None]]


def _keeper(state: AppState, who: Principal, body: ChatCompletionRequest) -> Keeper:
    """`store: true`: what saves the finished completion, before the client has its answer (or `[DONE]`)."""

    async def keep(completion: dict[str, object]) -> None:
        days = state.settings.stored_objects_retention_days
        await run_in_threadpool(lambda: stored.save(state.sessions, who, body, completion, retention_days=days))

    return keep


def _logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, object]:
    def one(piece: bytes, logprob: float) -> dict[str, object]:
        return {"token": gen.token_text(piece), "logprob": logprob, "bytes": list(piece)}

    content = [
        {**one(t.piece, t.logprob or 0.0), "top_logprobs": [one(p, lp) for _, p, lp in t.top]} for t in tokens
    ]
    return {"content": content, "refusal": None}


def _function(name: str | None, arguments: str | None) -> dict[str, str]:
    return {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}


def _completion(chat: ChatPlan, result: RunResult, created: int | None = None) -> dict[str, object]:
    plan = chat.generation
    wants_logprobs = plan.sampling.logprobs is not None
    choices = []
    for i, choice in enumerate(result.choices):
        message: dict[str, object] = {"role": "assistant", "content": choice.content, "refusal": None}
        if choice.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in choice.tool_calls
            ]
        if choice.function_call is not None:
            message["function_call"] = {"name": choice.function_call.name, "arguments": choice.function_call.arguments}
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": _logprobs(choice.logprobs) if wants_logprobs else None,
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": plan.request_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": plan.model.id,
        "system_fingerprint": plan.model.fingerprint,
        "choices": choices,
        "usage": gen.usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens),
    }


def _call_delta(piece: CallPiece) -> dict[str, object]:
    function = _function(piece.name, piece.arguments)
    if piece.legacy:
        return {"function_call": function}
    call: dict[str, object] = {"index": piece.call_index}
    if piece.id is not None:
        call.update(id=piece.id, type="function")
    call["function"] = function
    return {"tool_calls": [call]}


async def _stream(
    run: GenerationRun, events: AsyncIterator[EngineEvent], chat: ChatPlan, include_usage: bool, keep: Keeper | None = None
) -> AsyncIterator[bytes]:
    plan = run.plan
    created = int(time.time())
    wants_logprobs = plan.sampling.logprobs is not None
    assembler = Assembler(plan.n, chat.tools)
    answers = [ChoiceResult() for _ in range(plan.n)]  # the choices as streamed, whole, for `keep`

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
        async for event in events:
            for piece in assembler.feed(event):
                answers[piece.index].add(piece)
                if isinstance(piece, ContentPiece):
                    answers[piece.index].logprobs.extend(piece.logprobs)
                    logprobs = _logprobs(piece.logprobs) if wants_logprobs and piece.logprobs else None
                    yield chunk([choice(piece.index, {"content": piece.text}, logprobs=logprobs)])
                elif isinstance(piece, CallPiece):
                    yield chunk([choice(piece.index, _call_delta(piece))])
                elif isinstance(piece, ChoiceEnd):
                    yield chunk([choice(piece.index, {}, piece.reason)])
        if (unrecorded := await gen.settle_before_done([run])) is not None:
            yield unrecorded
            return
        if keep is not None:
            await keep(_completion(chat, RunResult(answers, (), run.prompt_tokens, run.completion_tokens, run.cached_tokens), created))
        if include_usage:
            yield chunk([], usage=gen.usage(run.prompt_tokens, run.completion_tokens, run.cached_tokens))
        yield gen.SSE_DONE
    except APIError as exc:
        # Headers are gone already: report the failure as an error event, then close.
        yield gen.sse(exc.body())
    finally:
        await run.settle()
