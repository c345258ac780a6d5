"""Pure-ASGI middleware: request ids, OpenAI's response headers, body limits and deadlines,
metrics and the access line of every request.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses and disconnect detection pass through.

Each request gets, in order:
- an id (the client's `x-request-id` when it is a sane token, else ``req_…``);
- a cancel scope with the request deadline, registered in `InFlightRequests` so a graceful
  shutdown can tighten it. A request cut by either before its response started gets an error
  envelope; an SSE stream already running gets a final error event, then the stream ends. The
  generation is settled by the route's own ``finally`` (shielded), so the ledger is right either way;
- its key checked from the headers alone, before a byte of the body is read (`api/keygate.py`
  knows the route's checks): a refused client gets its 401/403 in the envelope the route would
  have given, and its body is never read, buffered or parsed. Either way the connection is told
  (`api/connections.py`): a passed check makes it stop counting as unauthenticated, a failed one
  makes it count again, and its refusal says ``connection: close`` when its client has no room left;
- its body read here, before the app sees it: over `max_body_bytes` → 413 as soon as the limit is
  passed (declared or chunked, never buffered further); not complete within `body_timeout` → 408.
  A route that takes no key (``/health``, ``/metrics``, an unknown URL or method) reads no body,
  so the app gets an empty one and the client's is never read (the protocol discards it);
- one `Exchange` (the access line) and the request metrics, written when the response is over.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelhost.api.connections import KEY_CHECKED
from modelhost.api.deps import PASSED_CHECKS, HeaderCheck
from modelhost.api.errors import error_response
from modelhost.api.inflight import InFlightRequests
from modelhost.api.keygate import KeyGate
from modelhost.batches.dispatch import BATCH_PRINCIPAL
from modelhost.errors import APIError
from modelhost.observability import Observability
from modelhost.observability.access_log import Exchange, enter_exchange, leave_exchange

OPENAI_VERSION = "2020-10-01"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Statuses whose error code says why the service refused work (counted in modelhost_rejections).
_REJECTIONS = {408: "request_timeout", 413: "request_too_large", 429: "rate_limit_exceeded", 503: "overloaded"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            try:
                return value.decode("latin-1")
            except UnicodeDecodeError:
                return None
    return None


def _trust_batch_principal(scope: Scope, checks: tuple[HeaderCheck, ...]) -> None:
    """A batch line dispatched in-process (batches/dispatch.py): its batch's Principal is every check's answer.

    `BATCH_PRINCIPAL` is a top-level scope key, which only code in this process can set: a server
    builds an HTTP request's scope from the connection, and no header, path or body of a client's
    becomes a scope key (tests/api/test_batches.py sends a header of that name: it is ignored).
    """
    who = scope[BATCH_PRINCIPAL]
    state = scope.setdefault("state", {})
    state[PASSED_CHECKS] = {check: who for check in checks}
    state["principal"] = who  # what a passed `principal` check leaves for the response headers and access line


async def _no_body() -> Message:
    raise AssertionError("a response rendered before the body was read tried to read it")


def _error_body(message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


class RequestContextMiddleware:
    """Gives every request an id, limits and a deadline; counts and logs it when it ends."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout: float = 30.0,
        request_timeout: float = 600.0,
        inflight: InFlightRequests | None = None,
        observability: Observability | None = None,
        max_streamed_body_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # The cap of a route that streams its body (api.deps.streamed_body: file uploads), instead of max_body_bytes.
        self.max_streamed_body_bytes = max_streamed_body_bytes or max_body_bytes
        self.body_timeout = body_timeout
        self.request_timeout = request_timeout
        self.inflight = inflight if inflight is not None else InFlightRequests()  # (an empty one is falsy)
        self.observability = observability if observability is not None else Observability(access_log=False)
        self._gate: KeyGate | None = None  # indexed at the first request, when every router is included

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = _header(scope, b"x-request-id")
        request_id = client_id if client_id and _CLIENT_REQUEST_ID.match(client_id) else f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        exchange = Exchange(request_id=request_id, method=str(scope.get("method", "")))
        token = enter_exchange(exchange)
        metrics = self.observability.metrics
        metrics.in_flight.inc()
        try:
            await self._handle(scope, receive, send, exchange)
        finally:
            metrics.in_flight.dec()
            leave_exchange(token)
            self._finish(scope, exchange)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        request_id = exchange.request_id
        state = scope.get("state", {})
        response = _ResponseTracker(send, exchange, request_id, state, self.observability.metrics.rejected)
        with anyio.CancelScope(deadline=anyio.current_time() + self.request_timeout) as cut:
            self.inflight.add(cut)
            try:
                await self._serve(scope, receive, response)
            finally:
                self.inflight.discard(cut)
        if cut.cancelled_caught:
            await self._cut(response)

    async def _serve(self, scope: Scope, receive: Receive, response: _ResponseTracker) -> None:
        """Key (from the headers), then body, then the app; any of them may answer instead."""
        if self._gate is None:
            self._gate = KeyGate.of(scope["app"])
        route = self._gate.route(scope)
        checks = route.checks if route is not None else ()
        if route is not None:
            response.exchange.route = route.path  # known now, for a request refused before the router sees it
        if checks and BATCH_PRINCIPAL in scope:
            _trust_batch_principal(scope, checks)
        elif checks and not await self._authenticate(scope, checks, response):
            return
        declared = _header(scope, b"content-length")
        if route is not None and route.streams_body:
            if declared is not None and declared.isdigit() and int(declared) > self.max_streamed_body_bytes:
                await self._too_large(response, self.max_streamed_body_bytes)
                return
            stream = _BodyStream(receive, self.max_streamed_body_bytes, self.body_timeout, response.exchange)
            await self.app(scope, stream.receive, response.send)
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(response)
            return
        if checks:
            body = await self._read_body(receive, response)
            if body is None:
                return
        else:
            body = b""  # no key, no body: see the module docstring

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect, for disconnect watchers

        await self.app(scope, replay, response.send)

    async def _authenticate(self, scope: Scope, checks: tuple[HeaderCheck, ...], response: _ResponseTracker) -> bool:
        """Run the route's key checks on the headers; False after answering a refusal exactly as the route would."""
        request = Request(scope)  # no receive: a check that tried to read the body would fail loudly
        passed = {}
        try:
            for check in checks:
                passed[check] = await check(request)
        except APIError as refused:
            answer = error_response(refused)
            key_checked = scope.get("extensions", {}).get(KEY_CHECKED)
            if key_checked is not None and not key_checked(False):
                answer.headers["connection"] = "close"  # uvicorn closes the connection once this is sent
            await answer(scope, _no_body, response.send)
            return False
        scope.setdefault("state", {})[PASSED_CHECKS] = passed
        key_checked = scope.get("extensions", {}).get(KEY_CHECKED)
        if key_checked is not None:
            key_checked(True)
        return True

    async def _read_body(self, receive: Receive, response: _ResponseTracker) -> bytes | None:
        """The whole body, or None after answering 413 (too large) or 408 (too slow)."""
        chunks: list[bytes] = []
        received = 0
        with anyio.move_on_after(self.body_timeout) as slow:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    response.exchange.outcome = "client_disconnected"
                    response.exchange.status = 499
                    return None
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_body_bytes:
                    await self._too_large(response)
                    return None
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        assert slow.cancelled_caught
        response.exchange.outcome = "body_timeout"
        await response.error(
            408,
            _error_body(
                f"The request body was not received within {self.body_timeout:g} seconds.",
                "invalid_request_error",
                "request_timeout",
            ),
        )
        return None

    async def _too_large(self, response: _ResponseTracker, limit: int | None = None) -> None:
        await response.error(
            413,
            _error_body(
                f"Request body too large: the limit is {limit or self.max_body_bytes} bytes.",
                "invalid_request_error",
                "request_too_large",
            ),
        )

    async def _cut(self, response: _ResponseTracker) -> None:
        """The deadline passed, or the server is shutting down: end the response in OpenAI's shape."""
        draining = self.inflight.draining
        response.exchange.outcome = "shutting_down" if draining else "deadline_exceeded"
        if draining:
            message, code = "The server is shutting down; retry the request.", "server_shutting_down"
        else:
            message, code = (
                f"The request did not finish within the server's limit of {self.request_timeout:g} seconds.",
                "timeout",
            )
        body = _error_body(message, "server_error", code)
        if not response.started:
            headers = [(b"retry-after", b"1")] if draining else [(b"x-should-retry", b"false")]
            await response.error(503 if draining else 504, body, headers)
        elif response.is_event_stream and not response.complete:
            await response.send({"type": "http.response.body", "body": b"data: " + body + b"\n\n", "more_body": False})

    def _finish(self, scope: Scope, exchange: Exchange) -> None:
        route = scope.get("route")
        exchange.route = str(getattr(route, "path", exchange.route))
        principal = scope.get("state", {}).get("principal")
        if principal is not None:
            exchange.organization = principal.organization_id
            exchange.project = principal.project_id
            exchange.api_key_id = principal.key_id
        if exchange.status == 0:
            exchange.status = 500  # an exception escaped the app; the outer error middleware answered 500
        seconds = time.perf_counter() - exchange.started
        exchange.duration_ms = round(seconds * 1000, 1)
        self.observability.metrics.request_finished(
            route=exchange.route, method=exchange.method, status=exchange.status, model=exchange.model or "", seconds=seconds
        )
        self.observability.access_log.write(exchange)


class BodyTooLarge(APIError):
    """A streamed body went past its route's cap (raised from the route's read; the connection is closed after)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BodyTimeout(APIError):
    """A streamed body stalled: no chunk within the body timeout."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class _BodyStream:
    """`receive` for a route that reads its own body: each chunk counted against `cap` and awaited at most
    `idle_timeout` seconds; past either, the route's read raises (`BodyTooLarge`, `BodyTimeout`).

    The timeout is per chunk, not for the whole body as for buffered bodies: a 512 MiB upload takes
    longer than a JSON body may, and the request deadline still bounds it as a whole."""

    def __init__(self, receive: Receive, cap: int, idle_timeout: float, exchange: Exchange) -> None:
        self._receive = receive
        self._cap = cap
        self._idle_timeout = idle_timeout
        self._exchange = exchange
        self._received = 0
        self._complete = False

    async def receive(self) -> Message:
        if self._complete:
            return await self._receive()  # after the body: http.disconnect, for disconnect watchers
        message: Message | None = None
        with anyio.move_on_after(self._idle_timeout):
            message = await self._receive()
        close = {"connection": "close"}  # the rest of the body is never read
        if message is None:
            self._exchange.outcome = "body_timeout"
            raise BodyTimeout(f"No part of the request body arrived within {self._idle_timeout:g} seconds.", headers=close)
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._cap:
                raise BodyTooLarge(f"Request body too large: the limit is {self._cap} bytes.", headers=close)
            self._complete = not message.get("more_body", False)
        return message


class _ResponseTracker:
    """Wraps `send`: adds OpenAI's headers, remembers what was sent, counts refusals by error code."""

    def __init__(
        self, send: Send, exchange: Exchange, request_id: str, state: dict[str, object], rejected: Callable[[str], None]
    ) -> None:
        self._send = send
        self._rejected = rejected
        self.exchange = exchange
        self._request_id = request_id
        self._state = state
        self.started = False
        self.complete = False
        self.is_event_stream = False
        self._rejection: int | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            status = int(message["status"])
            self.exchange.status = status
            headers = list(message.get("headers", []))
            self.is_event_stream = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
            headers.append((b"x-request-id", self._request_id.encode()))
            headers.append((b"openai-version", OPENAI_VERSION.encode()))
            elapsed = int((time.perf_counter() - self.exchange.started) * 1000)
            headers.append((b"openai-processing-ms", str(elapsed).encode()))
            principal = self._state.get("principal")
            if principal is not None:
                headers.append((b"openai-organization", principal.organization_id.encode()))  # type: ignore[attr-defined]
                headers.append((b"openai-project", principal.project_id.encode()))  # type: ignore[attr-defined]
            message["headers"] = headers
            self._rejection = status if status in _REJECTIONS else None
        elif message["type"] == "http.response.body":
            if self._rejection is not None:
                self._rejected(_reason(self._rejection, message.get("body", b"")))
                self._rejection = None
            if not message.get("more_body", False):
                self.complete = True
        await self._send(message)

    async def error(self, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *(extra or []),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body})


def _reason(status: int, body: bytes) -> str:
    """The error `code` of a refusal's envelope (``insufficient_quota``), else a name for the status."""
    if len(body) <= 8192:
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if isinstance(code, str) and _CLIENT_REQUEST_ID.match(code):
            return code
    return _REJECTIONS[status]
