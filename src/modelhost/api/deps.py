"""Dependencies shared by routes: the app state and the authenticated `Principal`."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from modelhost.api.state import AppState
from modelhost.auth import Principal


def app_state(request: Request) -> AppState:
    return request.app.state.modelhost  # type: ignore[no-any-return]


async def principal(request: Request) -> Principal:
    """Authenticate the request (attached to every protected router, so no route can forget it)."""
    state = app_state(request)
    headers = request.headers
    who = await run_in_threadpool(
        state.authenticator.authenticate,
        headers.getlist("authorization"),
        headers.get("openai-organization"),
        headers.get("openai-project"),
    )
    request.state.principal = who
    return who
