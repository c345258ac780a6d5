"""A batch line run through the app's own ASGI stack, so its answer is the interactive one.

Each line becomes ``POST <endpoint>`` with the line's body, handed to the application object (its
middleware, routing, validation, error handlers, pipeline) without a socket. The status code, the
body bytes and the ``x-request-id`` header that `RequestContextMiddleware` adds are what a client
sending the same request over HTTP would get; the batch's output line carries them unchanged.

The batch's `Principal` rides in the ASGI scope under `BATCH_PRINCIPAL`, a key only a caller
inside this process can set: a server builds the scope of an HTTP request from the connection, and
nothing a client sends (headers, path, query, body) becomes a top-level scope key. The middleware
takes that principal as the answer of every key check of the route instead of reading headers
(`api/middleware.py`). The line's request is not streamed (`runner.py` answers ``stream: true``
with a 400 before dispatching it), so the whole body is collected here.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio

from modelhost.auth import Principal

logger = logging.getLogger(__name__)
_SERVER_ERROR = json.dumps(
    {"error": {"message": "The server had an error while processing this request.", "type": "server_error", "param": None, "code": None}}
).encode()
BATCH_PRINCIPAL = "modelhost.batch_principal"  # ASGI scope key: the Principal a batch line runs as

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    request_id: str


def line_scope(endpoint: str, body: bytes, who: Principal) -> dict[str, Any]:
    """The scope of ``POST endpoint`` carrying `body`, run as `who`."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": endpoint,
        "raw_path": endpoint.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"batch.internal"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"user-agent", b"modelhost-batch"),
        ],
        "client": None,
        "server": None,
        "state": {},
        "extensions": {},
        BATCH_PRINCIPAL: who,
    }


async def dispatch(app: ASGIApp, endpoint: str, body: bytes, who: Principal) -> Answer:
    """Send `body` to `endpoint` of `app` as `who`; the status, body and request id it answered."""
    delivered = False
    status = 500
    request_id = ""
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()  # no disconnect: the "client" waits for the whole answer
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        nonlocal status, request_id
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for name, value in message.get("headers", []):
                if name.lower() == b"x-request-id":
                    request_id = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(line_scope(endpoint, body, who), receive, send)
    except Exception:
        # Starlette's outermost middleware answers 500 and then re-raises for the server to log: the
        # answer is the line's; without one the line still fails as a 500, never silently.
        logger.exception("batch line to %s raised", endpoint)
        if not request_id:
            status, chunks[:] = 500, [_SERVER_ERROR]
    return Answer(status, b"".join(chunks), request_id or f"req_{uuid.uuid4().hex}")
