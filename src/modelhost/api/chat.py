"""`POST /v1/chat/completions`: parse, plan, run through the pipeline, render JSON or SSE."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from modelhost.api.deps import app_state, principal
from modelhost.auth import Principal
from modelhost.engine import ChoiceFinished, TextDelta
from modelhost.engine.chat_template import ChatTemplateError
from modelhost.engine.registry import ServedModel
from modelhost.errors import APIError, ContextLengthExceeded, InvalidRequest
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
    max_n = min(state.settings.max_n, served.engine.max_n)
    if n > max_n:
        raise InvalidRequest(f"Invalid value for 'n': at most {max_n} choices per request.", param="n", code="invalid_value")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    prompt = await run_in_threadpool(_tokenize_chat, served, body)
    context = served.engine.context_length
    if len(prompt) >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, your messages resulted in "
            f"{len(prompt)} tokens. Please reduce the length of the messages.",
            param="messages",
        )
    room = context - len(prompt)
    asked = body.max_completion_tokens or body.max_tokens
    max_tokens = min(asked, room) if asked else room
    sampling = convert.sampling_params(body, max_tokens=max_tokens, n_vocab=served.engine.vocab_size)
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
        return SettledStreamingResponse(_sse(run, include_usage), settle=run.settle)
    try:
        return JSONResponse(await _until_disconnect(request, _collect(run)))
    except ClientDisconnected:
        return Response(status_code=499)  # nobody is listening; the ledger has the partial usage
    finally:
        await run.settle()


async def _collect(run: GenerationRun) -> dict[str, object]:
    plan = run.plan
    texts = [""] * plan.n
    reasons = ["stop"] * plan.n
    async for event in run.events():
        if isinstance(event, TextDelta):
            texts[event.index] += event.text
        elif isinstance(event, ChoiceFinished):
            reasons[event.index] = event.reason
    completion = run.completion_tokens
    return {
        "id": plan.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model.id,
        "system_fingerprint": plan.model.fingerprint,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": texts[i], "refusal": None},
                "logprobs": None,
                "finish_reason": reasons[i],
            }
            for i in range(plan.n)
        ],
        "usage": {
            "prompt_tokens": run.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": run.prompt_tokens + completion,
        },
    }


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


async def _until_disconnect(request: Request, work: Awaitable[dict[str, object]]) -> dict[str, object]:
    """Await `work`, cancelling it as soon as the client disconnects (so its slot is freed)."""

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        raise ClientDisconnected()
    return task.result()


def _sse_line(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _sse(run: GenerationRun, include_usage: bool) -> AsyncIterator[bytes]:
    plan = run.plan
    created = int(time.time())

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
        return _sse_line(payload)

    def choice(index: int, delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    try:
        for i in range(plan.n):
            yield chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})])
        async for event in run.events():
            if isinstance(event, TextDelta):
                yield chunk([choice(event.index, {"content": event.text})])
            elif isinstance(event, ChoiceFinished):
                yield chunk([choice(event.index, {}, event.reason)])
        if include_usage:
            completion = run.completion_tokens
            usage = {
                "prompt_tokens": run.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": run.prompt_tokens + completion,
            }
            yield chunk([], usage=usage)
        yield b"data: [DONE]\n\n"
    except APIError as exc:
        # Headers are gone already: report the failure as an error event, then close.
        yield _sse_line(exc.body())
    finally:
        await run.settle()


class SettledStreamingResponse(StreamingResponse):
    """An SSE response that settles its generation even if the body was never iterated."""

    def __init__(self, content: AsyncIterator[bytes], *, settle: Callable[[], Awaitable[None]]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self._settle = settle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle()
