"""The key gate (api/keygate.py): every route that takes a key is known, with its checks, before the body is read."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request

from modelhost.api import create_app
from modelhost.api.admin.deps import admin_principal
from modelhost.api.deps import header_check, principal
from modelhost.api.keygate import KeyGate
from modelhost.api.openapi import any_key
from modelhost.auth import Principal

NO_KEY = {"/health", "/metrics"}  # /metrics checks its own token, which is not an API key


def _scope(method: str, path: str) -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "root_path": ""}


def test_every_route_but_health_and_metrics_is_checked_before_its_body() -> None:
    routes = KeyGate.of(create_app()).paths()
    assert len(routes) > 40
    for (method, path), checks in routes.items():
        if path in NO_KEY:
            assert checks == (), path
        elif path.startswith("/v1/organization/"):
            assert checks == (admin_principal,), (method, path)
        elif path == "/openapi.json":
            assert checks == (any_key,)
        else:
            assert checks == (principal,), (method, path)


def test_a_request_finds_the_route_the_router_would_pick() -> None:
    gate = KeyGate.of(create_app())
    assert gate.route(_scope("POST", "/v1/chat/completions")).checks == (principal,)  # type: ignore[union-attr]
    assert gate.route(_scope("GET", "/v1/models/some/model:with-slashes")).path == "/v1/models/{model:path}"  # type: ignore[union-attr]
    assert gate.route(_scope("DELETE", "/v1/organization/projects/proj_x/users/u")).checks == (admin_principal,)  # type: ignore[union-attr]
    assert gate.route(_scope("GET", "/health")).checks == ()  # type: ignore[union-attr]
    assert gate.route(_scope("PUT", "/v1/chat/completions")) is None  # wrong method: the router's 405, no key asked
    assert gate.route(_scope("POST", "/v1/nothing")) is None


def test_a_route_that_reads_a_body_without_a_key_check_is_refused_when_the_app_is_built() -> None:
    router = APIRouter()

    @router.post("/open")
    async def open_route(body: dict[str, str]) -> dict[str, str]:
        return body

    app = FastAPI()
    app.include_router(router)
    with pytest.raises(AssertionError, match="reads a body but declares no header_check"):
        KeyGate.of(app)


def test_a_check_the_middleware_ran_is_not_run_again_for_the_route() -> None:
    calls: list[str] = []

    @header_check
    async def check(request: Request) -> Principal:
        calls.append("checked")
        return Principal("org-a", "proj_a", "user-a", "key_a", "user")

    router = APIRouter(dependencies=[Depends(check)])

    @router.post("/thing")
    async def thing(body: dict[str, str], who: Principal = Depends(check)) -> dict[str, str]:
        return body

    app = FastAPI()
    app.include_router(router)
    assert KeyGate.of(app).route(_scope("POST", "/thing")).checks == (check,)  # type: ignore[union-attr]
    passed = Principal("org-b", "proj_b", "user-b", "key_b", "user")
    request = Request({"type": "http", "headers": [], "state": {"modelhost.passed_checks": {check: passed}}})
    assert asyncio.run(check(request)) is passed and calls == []
    assert asyncio.run(check(Request({"type": "http", "headers": [], "state": {}}))).organization_id == "org-a"
    assert calls == ["checked"]
