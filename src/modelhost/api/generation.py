"""What every generating endpoint shares: sizing the completion, running a plan to the end or as a
stream, noticing a client that left, and settling the run however the response ends.

Endpoints only decide their wire format; the request → engine → ledger loop is in `pipeline`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from modelhost.engine import ChoiceFinished, TextDelta
from modelhost.engine.base import EngineEvent, PromptLogprobs, TokenLogprob, ToolCallDelta
from modelhost.engine.registry import ServedModel
from modelhost.errors import ContextLengthExceeded, InvalidRequest, ServerError
from modelhost.pipeline import GenerationRun

T = TypeVar("T")


def completion_budget(served: ServedModel, prompt_tokens: int, asked: int | None, *, param: str) -> int:
    """Tokens the completion may have: what was asked, clamped to the context left; 400 if none is left."""
    context = served.engine.context_length
    if prompt_tokens >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, your {param} resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the {param}.",
            param=param,
        )
    room = context - prompt_tokens
    return room if asked is None else min(asked, room)


def check_n(served: ServedModel, n: int, max_n: int, *, param: str = "n") -> None:
    limit = min(max_n, served.engine.max_n)
    if n > limit:
        raise InvalidRequest(f"Invalid value for '{param}': at most {limit} per request.", param=param, code="invalid_value")


@dataclass
class ChoiceResult:
    text: str = ""
    finish_reason: str = "stop"
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: dict[int, dict[str, str]] = field(default_factory=dict)  # from an upstream: call index → id, name, arguments
    function_call: dict[str, str] | None = None  # the deprecated single call, from an upstream

    def add_call(self, delta: ToolCallDelta) -> None:
        if delta.legacy:
            call = self.function_call = self.function_call or {"name": "", "arguments": ""}
        else:
            call = self.tool_calls.setdefault(delta.call_index, {"id": "", "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
        call["name"] = delta.name or call["name"]
        call["arguments"] += delta.arguments


@dataclass
class RunResult:
    choices: list[ChoiceResult]
    prompt_logprobs: tuple[TokenLogprob, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


async def collect(run: GenerationRun) -> RunResult:
    """Run to the end, gathering each choice's text, finish reason and logprobs."""
    choices = [ChoiceResult() for _ in range(run.plan.n)]
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    async for event in run.events():
        if isinstance(event, TextDelta):
            choices[event.index].text += event.text
            choices[event.index].logprobs.extend(event.logprobs)
        elif isinstance(event, ChoiceFinished):
            choices[event.index].finish_reason = event.reason
        elif isinstance(event, PromptLogprobs):
            prompt_logprobs = event.tokens
        elif isinstance(event, ToolCallDelta):
            choices[event.index].add_call(event)
    return RunResult(choices, prompt_logprobs, run.prompt_tokens, run.completion_tokens, run.cached_tokens)


async def started(run: GenerationRun) -> AsyncIterator[EngineEvent]:
    """`run`'s events once the first one has arrived, so that a failure before any output (an
    upstream's 400, an unreachable upstream) is still a plain HTTP error, not an event in a 200 stream."""
    events = run.events()
    try:
        first: EngineEvent | None = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await run.settle()
        raise

    async def chained() -> AsyncIterator[EngineEvent]:
        if first is not None:
            yield first
        async for event in events:
            yield event

    return chained()


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, object]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def token_text(piece: bytes) -> str:
    """A token as text; bytes that are not whole UTF-8 characters are shown escaped, as OpenAI does."""
    return piece.decode("utf-8", errors="backslashreplace")


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it as soon as the client disconnects (so its slots are freed)."""

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


def sse(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


async def settle_before_done(runs: Sequence[GenerationRun]) -> bytes | None:
    """Settle a finished stream's runs before its usage chunk and ``[DONE]``: None once every ledger
    row is durable, else the error event to end the stream with (the rows are written later)."""
    for run in runs:
        await run.settle()
    if all(run.recorded for run in runs):
        return None
    return sse(
        ServerError(
            "The response is complete, but its usage could not be recorded yet; it will be recorded when the "
            "database is back.",
            code="usage_not_recorded",
        ).body()
    )


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
