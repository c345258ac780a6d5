"""Which key checks a request needs, known from its method and path before its body is read.

FastAPI reads and parses a route's body before it solves the route's dependencies, so a key
checked by a dependency would be checked only after an unauthenticated client had the server
buffer and ``json.loads`` its body. `KeyGate.of(app)` indexes the app's routes once instead: each
route's path pattern, its methods, and the `header_check` dependencies it declares (router-level,
endpoint-level and nested, e.g. the admin routes' `admin_scope`). `RequestContextMiddleware` asks
`route(scope)` for the route that will answer the request — the first whose path and method both
match, as Starlette's router picks it — and runs its checks before it reads a byte of the body::

    gate = KeyGate.of(app)
    gate.route({"type": "http", "method": "POST", "path": "/v1/chat/completions", ...}).checks  # (principal,)
    gate.route({... "method": "GET", "path": "/health"}).checks                                 # ()

No checks means the route takes no key (``/health``; ``/metrics``, which checks its own token) or
no route answers (404, 405). Such a request is answered without its body, so `of()` refuses an
app where a route that reads a body declares no check: that route would otherwise get none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from starlette.routing import get_route_path
from starlette.types import Scope

from modelhost.api.deps import HeaderCheck, is_header_check


@dataclass(frozen=True)
class GatedRoute:
    """A route as the gate knows it: its path template (``/v1/models/{model:path}``) and key checks."""

    path: str
    pattern: re.Pattern[str]
    methods: frozenset[str] | None  # None: every method
    checks: tuple[HeaderCheck, ...]
    # The route reads its own body as a stream (a file upload; `api.deps.streamed_body`): the middleware
    # passes the body through, bounded, instead of reading it whole first.
    streams_body: bool = False


def _calls(dependant: Dependant) -> Iterator[object]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _checks(dependant: Dependant | None) -> tuple[HeaderCheck, ...]:
    if dependant is None:
        return ()
    found: dict[object, None] = {}  # ordered and without repeats (a router's check and an endpoint's may be one)
    for call in _calls(dependant):
        if is_header_check(call):
            found[call] = None
    return tuple(found)  # type: ignore[arg-type]


class KeyGate:
    """The key checks of every route of one app, by method and path."""

    def __init__(self, routes: list[GatedRoute]) -> None:
        self._routes = routes

    @classmethod
    def of(cls, app: FastAPI) -> KeyGate:
        routes = []
        for context in iter_route_contexts(app.routes):
            pattern = getattr(context, "path_regex", None)
            if pattern is None:
                continue
            dependant = getattr(context, "dependant", None)
            methods = getattr(context, "methods", None)
            checks = _checks(dependant)
            reads_body = dependant is not None and bool(dependant.body_params)
            assert checks or not reads_body, (
                f"route {context.path} reads a body but declares no header_check: requests that take no key are "
                "answered without their body (api/keygate.py)"
            )
            streams = dependant is not None and any(getattr(call, "streams_body", False) is True for call in _calls(dependant))
            assert checks or not streams, f"route {context.path} streams its body but declares no header_check"
            routes.append(GatedRoute(str(context.path), pattern, frozenset(methods) if methods else None, checks, streams))
        return cls(routes)

    def route(self, scope: Scope) -> GatedRoute | None:
        """The route that will answer this request; None if none will (404, 405)."""
        path = get_route_path(scope)
        method = scope.get("method", "")
        for route in self._routes:
            if route.pattern.match(path) and (route.methods is None or method in route.methods):
                return route
        return None

    def paths(self) -> dict[tuple[str, str], tuple[HeaderCheck, ...]]:
        """(method, path template) → checks, for tests and the curious."""
        return {(m, r.path): r.checks for r in self._routes for m in sorted(r.methods or {"*"})}
