"""R2-10 and R2-14: what `/health` tells a stranger, and the answers uvicorn gives on its own.

R2-10: without the metrics token `/health` says only whether the server can serve (200
``{"status": "ok"}``, or a 503 in OpenAI's envelope once an engine stopped); model ids, slots, queue
depths and replica circuits are details for the holder of `MODELHOST_METRICS_TOKEN` only.

R2-14: every error a client can receive is JSON in OpenAI's envelope with the right status, also
those uvicorn answers without asking the app: its HTTP parser's 400 (a NUL byte in a header, a
malformed request line or header), the 503 beyond `limit_concurrency`, the 500 for an app that
ended without a response; WebSocket upgrades are off, so an upgrade request is plain HTTP.

The real server (`guarded`, `bare`) is probed with raw bytes no client library would send; the
paths that need a special app (a stopped engine, an app that never answers) run that app under
the server's own uvicorn configuration (`api.server.uvicorn_config`) on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from modelhost.api import create_app
from modelhost.api.server import uvicorn_config
from modelhost.config import Settings
from modelhost.engine import ModelRegistry, ServedModel
from modelhost.engine.llamacpp import LlamaCppEngine
from serverproc import METRICS_TOKEN, MODEL, free_port

from engine.fake_llama import FakeModel
from .conftest import Guarded, make_key

LIVE = {"status": "ok"}


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` on a new connection and read the whole answer: (status, lower-cased headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        data = b""
        with contextlib.suppress(ConnectionResetError, socket.timeout):
            while chunk := sock.recv(65536):
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                length = next((int(v) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")) if k.strip().lower() == b"content-length"), None)
                if sep and length is not None and len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def assert_envelope(status: int, headers: dict[str, str], body: bytes, expected_status: int, code: str | None = None) -> dict[str, object]:
    assert status == expected_status, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code is not None:
        assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


@contextlib.contextmanager
def serving(app: object, **settings: object) -> Iterator[int]:
    """`app` on a loopback port under the server's uvicorn configuration, in a thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, Settings(port=port, **settings)))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


# -- R2-10: /health ------------------------------------------------------------------------------
def test_R2_10_health_tells_anyone_without_the_metrics_token_only_that_the_server_serves(guarded: Guarded) -> None:
    admin = make_key(guarded.proc, "--kind", "admin", "--name", "r2-health")["secret"]
    for headers in (
        {},
        guarded.auth,  # an API key
        {"Authorization": f"Bearer {admin}"},  # an admin key: the details are server-wide, not one organization's
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": METRICS_TOKEN},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
    ):
        response = httpx.get(f"{guarded.proc.root_url}/health", headers=headers, timeout=5)
        assert response.status_code == 200 and response.json() == LIVE, (headers, response.text)
        assert MODEL not in response.text and "slots" not in response.text


def test_R2_10_the_metrics_token_gets_the_details(guarded: Guarded) -> None:
    response = httpx.get(f"{guarded.proc.root_url}/health", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
    details = response.json()
    assert response.status_code == 200 and details["status"] == "ok"
    assert details["engines"][0]["model"] == MODEL and details["engines"][0]["slots_total"] == 2
    assert [e["model"] for e in details["embedders"]]


def test_R2_10_a_server_without_a_metrics_token_gives_nobody_the_details(bare: Guarded) -> None:
    for headers in ({}, bare.auth, {"Authorization": f"Bearer {METRICS_TOKEN}"}):
        response = httpx.get(f"{bare.proc.root_url}/health", headers=headers, timeout=5)
        assert response.status_code == 200 and response.json() == LIVE


def test_R2_10_health_is_503_in_the_envelope_once_an_engine_stopped(tmp_path: Path) -> None:
    engine = LlamaCppEngine(FakeModel(), model_id="fake-chat", slots=1, slot_context=256, batch_tokens=64, threads=1, flash_attention=False)  # type: ignore[arg-type]
    registry = ModelRegistry([ServedModel(id="fake-chat", created=0, owned_by="tests", engine=engine, fingerprint="fp_fake")])
    settings = Settings(home=tmp_path, metrics_token=METRICS_TOKEN)
    app = create_app(settings, registry_factory=lambda _: registry)
    with serving(app, home=tmp_path) as port:
        url = f"http://127.0.0.1:{port}/health"
        assert httpx.get(url, timeout=5).json() == LIVE
        asyncio.run(engine.stop())  # the decode thread ends, as it would after a crash
        assert not engine.alive
        response = httpx.get(url, timeout=5)
        error = assert_envelope(response.status_code, dict(response.headers), response.content, 503, "engine_unavailable")
        assert response.json()["status"] == "unavailable" and "fake-chat" not in str(error)
        assert "engines" not in response.json()
        detailed = httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
        assert detailed.status_code == 503 and detailed.json()["engines"][0]["model"] == "fake-chat"


# -- R2-14: uvicorn's own answers ----------------------------------------------------------------
BAD_HEADS = {
    "nul-in-header-value": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trace: a\x00b\r\n\r\n",
    "nul-in-authorization": b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-\x00x\r\n\r\n",
    "space-in-header-name": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
    "bare-cr-in-header": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\rb\r\n\r\n",
    "not-http": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32 + b"\r\n\r\n",  # a TLS hello
    "garbage-request-line": b"HELLO THERE\r\n\r\n",
    "bad-version": b"GET /health HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    "bad-content-length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 12abc\r\n\r\n{}",
    "two-content-lengths": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bad-chunk-size": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "non-ascii-path": b"GET /v1/mod\xffels HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_HEADS))
def test_R2_14_the_http_parsers_refusals_are_openai_errors(guarded: Guarded, name: str) -> None:
    status, headers, body = exchange(guarded.proc.port, BAD_HEADS[name])
    if name == "bad-chunk-size" and status == 401:
        # The head was valid: had the body arrived in a later read, the app refused the missing key first.
        assert_envelope(status, headers, body, 401)
        return
    assert_envelope(status, headers, body, 400, "invalid_http_request")
    assert headers.get("connection") == "close"
    assert httpx.get(f"{guarded.proc.root_url}/health", timeout=5).status_code == 200  # and the server keeps serving


@pytest.mark.parametrize(
    ("path", "upgrade", "expected"),
    [("/health", b"websocket", 200), ("/v1/models", b"websocket", 401), ("/v1/models", b"h2c", 401), ("/nowhere", b"websocket", 404)],
)
def test_R2_14_an_upgrade_request_is_answered_as_plain_http(guarded: Guarded, path: str, upgrade: bytes, expected: int) -> None:
    raw = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + b"Connection: Upgrade\r\nUpgrade: " + upgrade
        + b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    status, headers, body = exchange(guarded.proc.port, raw)
    if expected == 200:
        assert status == 200 and json.loads(body) == LIVE
    else:
        assert_envelope(status, headers, body, expected)


def test_R2_14_beyond_the_connection_limit_the_503_is_an_openai_error(tmp_path: Path) -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b"{}"})

    with serving(app, home=tmp_path, max_connections=1) as port:  # the request's own connection is the one allowed
        status, headers, body = exchange(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert_envelope(status, headers, body, 503, "overloaded")
    assert headers.get("retry-after") == "1"


def test_R2_14_an_app_that_ends_without_answering_gets_an_openai_500(tmp_path: Path) -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            return  # no response at all: uvicorn answers for it

    with serving(app, home=tmp_path) as port:
        status, headers, body = exchange(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert_envelope(status, headers, body, 500)
