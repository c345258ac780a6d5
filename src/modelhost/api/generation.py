"""What every generating endpoint shares over HTTP: starting a stream, noticing a client that left,
and settling the run however the response ends.

Endpoints only convert their wire format and render; planning, the request → engine → ledger loop
and the assembly of answers are in `pipeline`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from modelhost.engine.base import EngineEvent
from modelhost.errors import ServerError
from modelhost.pipeline import GenerationRun
from modelhost.pipeline.assembly import RunResult, collect
from modelhost.structured.tools import ToolPlan

T = TypeVar("T")


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
    """Await `work`, cancelling it as soon as the client disconnects (so its slots are freed).

    The cancellation is anyio's, so the shielded scopes inside `work` (opening and settling a
    request's account) finish before it ends; a bare `Task.cancel()` would break through them."""
    outcome: list[T] = []

    async def run() -> None:
        outcome.append(await work)
        group.cancel_scope.cancel()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        group.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            group.start_soon(watch)
    except BaseExceptionGroup as failed:  # `work` raised (an APIError, ...): raise it as itself
        if len(failed.exceptions) == 1:
            raise failed.exceptions[0] from None
        raise
    if not outcome:
        raise ClientDisconnected()
    return outcome[0]


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


async def stream_response(
    run: GenerationRun, render: Callable[[AsyncIterator[EngineEvent]], AsyncIterator[bytes]]
) -> SettledStreamingResponse:
    """`run`'s SSE response: its events rendered by `render`, settled however the response ends,
    with the rate-limit headers. A forwarded request starts once the upstream answered, so that
    upstream's errors keep their HTTP status."""
    events = await started(run) if run.plan.upstream is not None else run.events()
    response = SettledStreamingResponse(render(events), settle=run.settle)
    response.headers.update(run.rate_limit_headers)
    return response


async def collected(request: Request, run: GenerationRun, tools: ToolPlan | None) -> RunResult | None:
    """`run` to its end, assembled, and settled; None when the client left first (answer 499:
    nobody is listening, and the ledger has the partial usage)."""
    try:
        return await until_disconnect(request, collect(run, tools))
    except ClientDisconnected:
        return None
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
