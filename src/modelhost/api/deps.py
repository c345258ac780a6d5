"""Dependencies shared by routes: the app state and the authenticated `Principal`.

Every way of authenticating a route is a `header_check`: it reads the request's headers and
nothing else, so `RequestContextMiddleware` runs it before the body is read (`api/keygate.py`
finds a route's checks from its method and path). A refused client never has its body read, let
alone parsed; FastAPI's own call of the same dependency on the same request returns the answer
the middleware already had instead of asking the store again.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from fastapi import Request

from modelhost.api.state import AppState
from modelhost.auth import Principal

T = TypeVar("T")
HeaderCheck = Callable[[Request], Awaitable[Principal]]
PASSED_CHECKS = "modelhost.passed_checks"  # scope["state"] key: {header check: the Principal it returned}


def app_state(request: Request) -> AppState:
    return request.app.state.modelhost  # type: ignore[no-any-return]


def header_check(check: HeaderCheck) -> HeaderCheck:
    """Mark `check`, an authentication dependency that reads only headers, for the middleware to run before the body."""

    @functools.wraps(check)
    async def dependency(request: Request) -> Principal:
        passed = request.scope.get("state", {}).get(PASSED_CHECKS)
        if passed is not None and dependency in passed:
            return passed[dependency]  # type: ignore[no-any-return]
        return await check(request)

    dependency.reads_only_headers = True  # type: ignore[attr-defined]
    return dependency


def is_header_check(call: object) -> bool:
    return getattr(call, "reads_only_headers", False) is True


async def in_thread(function: Callable[..., T], *args: object) -> T:
    """Run a blocking check on a worker thread that a cancelled request abandons.

    A store that hangs must not hold a request past its deadline or a shutdown past its grace
    period: on cancellation the request goes on without waiting (the thread finishes, or not, on
    its own; a key check only reads).
    """
    return await anyio.to_thread.run_sync(functools.partial(function, *args), abandon_on_cancel=True)


@header_check
async def principal(request: Request) -> Principal:
    """Authenticate the request (attached to every protected router, so no route can forget it)."""
    state = app_state(request)
    headers = request.headers
    who = await in_thread(
        state.authenticator.authenticate,
        headers.getlist("authorization"),
        headers.get("openai-organization"),
        headers.get("openai-project"),
    )
    request.state.principal = who
    return who


def streamed_body(request: Request) -> None:
    """Marks a route that reads its body itself, as a stream (`POST /v1/files`, upload parts).

    `RequestContextMiddleware` then passes the body through instead of reading it whole first: at
    most `max_streamed_body_bytes` (413 past it, raised from the route's read), each chunk within the
    body timeout of the one before (408). The route must count what it keeps against its own limit.
    """


streamed_body.streams_body = True  # type: ignore[attr-defined]
