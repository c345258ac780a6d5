"""The answers uvicorn gives on its own, before or around the app, in OpenAI's error envelope.

uvicorn answers some requests without asking the app, in plain text: ``400 Invalid HTTP request
received.`` when its parser refuses the bytes (a NUL or a newline in a header, a malformed request
line, a bad chunk size), ``503 Service Unavailable`` beyond `limit_concurrency`, and ``500 Internal
Server Error`` when an app ends without a response. The OpenAI SDKs read every error body as
``{"error": {"message", "type", "param", "code"}}``; `api/server.py`'s protocol sends these instead:

- `raw_response(error)`: the bytes of a whole ``connection: close`` response, written straight to
  the transport (the parser's 400, and our own head-size limit's 431);
- `overloaded_app`: the ASGI app uvicorn runs in place of ours beyond `limit_concurrency` (503,
  `Retry-After: 1`, code `overloaded`);
- `send_500(cycle)`: what uvicorn's request cycle sends when the app failed before responding.
"""

from __future__ import annotations

import http
import json
from typing import Any

from modelhost.errors import APIError, InvalidRequest, ServerError, ServiceUnavailable

class HeadersTooLarge(InvalidRequest):
    """The request head (request line and headers) is larger than the server takes."""

    status = 431
    code = "request_header_fields_too_large"


HEADERS_TOO_LARGE = HeadersTooLarge("Request headers too large.")
INVALID_HTTP = InvalidRequest(
    "Invalid HTTP request received: the request line, a header or the body framing is malformed "
    "(for example a control character in a header).",
    code="invalid_http_request",
)
TOO_MANY_CONNECTIONS = ServiceUnavailable(
    "The server is handling too many connections; retry shortly.", code="overloaded", headers={"Retry-After": "1"}
)
NO_RESPONSE = ServerError("The server had an error while processing your request; retry the request.")


def _body(error: APIError) -> bytes:
    return json.dumps(error.body()).encode()


def _headers(error: APIError, body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()),
    ]


def raw_response(error: APIError) -> bytes:
    """A complete HTTP/1.1 response carrying `error`, after which the connection is closed."""
    body = _body(error)
    reason = http.HTTPStatus(error.status).phrase.encode()
    head = b"".join(name + b": " + value + b"\r\n" for name, value in _headers(error, body))
    return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (error.status, reason, head, body)


async def _send(error: APIError, send: Any) -> None:
    body = _body(error)
    await send({"type": "http.response.start", "status": error.status, "headers": _headers(error, body)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def overloaded_app(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's `service_unavailable`, as OpenAI's 503."""
    await _send(TOO_MANY_CONNECTIONS, send)


async def send_500(cycle: Any) -> None:
    """uvicorn's `RequestResponseCycle.send_500_response`, as OpenAI's 500."""
    await _send(NO_RESPONSE, cycle.send)
