"""Servers and helpers for the checklist tests (../shared/SECURITY.md, items A–U).

`guarded` is one real `modelhost serve` for the whole session with short limits (2 s header, body
and send timeouts, a 1 MiB body limit, 2 slots and a queue of 1) so that limit tests finish in
seconds; tests that must kill, stop or cut a server start their own with `start_server`. `bare` is
a server as installed: no metrics token (nor embedding models, which its tests do not use).
Everything listens on 127.0.0.1 and every load is bounded in requests and seconds.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from serverproc import METRICS_TOKEN, MODEL, ServerProcess

GUARDED_ENV = {
    "MODELHOST_METRICS_TOKEN": METRICS_TOKEN,
    "MODELHOST_SLOTS": "2",
    "MODELHOST_MAX_QUEUED": "1",
    "MODELHOST_HEADER_TIMEOUT_SECONDS": "2",
    "MODELHOST_BODY_TIMEOUT_SECONDS": "2",
    "MODELHOST_SEND_TIMEOUT_SECONDS": "2",
    "MODELHOST_SEND_BUFFER_BYTES": str(16 * 1024),
    "MODELHOST_MAX_BODY_BYTES": str(1024 * 1024),
    "MODELHOST_KEY_CACHE_SECONDS": "0.5",
}
# SmolLM2's end tokens (<|endoftext|>, <|im_start|>, <|im_end|>): banned, a generation runs to max_tokens.
NO_END = {"0": -100, "1": -100, "2": -100}


@dataclass(frozen=True)
class Guarded:
    proc: ServerProcess
    key: str
    organization: str
    project: str
    key_id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_key(proc: ServerProcess, *args: str) -> dict[str, str]:
    return {k: str(v) for k, v in proc.cli("keys", "create", *args).items()}


def start_server(home: Path, **env: str) -> ServerProcess:
    overrides = {"MODELHOST_KEY_CACHE_SECONDS": "0.5", "MODELHOST_METRICS_TOKEN": METRICS_TOKEN, **env}
    return ServerProcess(home, env_overrides=overrides).start()


@pytest.fixture(scope="session")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    proc = start_server(tmp_path_factory.mktemp("guarded"), **GUARDED_ENV)
    key = make_key(proc, "--name", "security")
    yield Guarded(proc, key["secret"], key["organization"], key["project"], key["id"])
    proc.stop()


@pytest.fixture(scope="session")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    lean = {"MODELHOST_EMBEDDING_MODEL_ENABLED": "false", "MODELHOST_CHAT_MODEL_EMBEDDINGS": "false"}
    proc = ServerProcess(tmp_path_factory.mktemp("bare"), env_overrides=lean).start()
    key = make_key(proc, "--name", "bare")
    yield Guarded(proc, key["secret"], key["organization"], key["project"], key["id"])
    proc.stop()


def long_chat(max_tokens: int, *, stream: bool, **extra: object) -> dict[str, object]:
    """A chat body that keeps generating until `max_tokens` (end tokens are banned)."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story about a lighthouse."}],
        "max_tokens": max_tokens,
        "logit_bias": NO_END,
        "stream": stream,
        **extra,
    }


def open_request(port: int, body: dict[str, object], key: str, *, rcvbuf: int | None = None) -> socket.socket:
    """Send a chat request on a raw socket and return it unread (the caller decides how to read)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def read_head(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Read until the end of the response head: (status, lower-cased headers, body bytes so far)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, rest


def wait_until(predicate, timeout: float, every: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll `predicate()` until it returns something truthy; that value, or AssertionError at `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


def engine_state(proc: ServerProcess) -> dict[str, object]:
    """The first engine's state from /health's details (the server needs the metrics token)."""
    return proc.health()["engines"][0]  # type: ignore[index,no-any-return]


def app_routes() -> list[tuple[str, str]]:
    """Every (method, path template) the app serves, hidden routes included (HEAD left out)."""
    from modelhost.api import create_app

    found: list[tuple[str, str]] = []

    def walk(routes: list[object]) -> None:
        for route in routes:
            candidates = getattr(route, "effective_candidates", None)
            if candidates is not None:  # FastAPI's included router: its routes with their full paths
                walk(candidates())
                continue
            original = getattr(route, "original_route", route)
            methods = getattr(original, "methods", None)
            path = getattr(route, "path", None) or getattr(original, "path", None)
            if methods and path:
                found.extend((m, path) for m in sorted(methods) if m != "HEAD")

    walk(create_app().router.routes)
    return sorted(set(found))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind (PostgreSQL: its own database, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    name = f"modelhost_sec_{uuid.uuid4().hex[:10]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed `sock` (whatever it sent is read and dropped); fails after `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except (socket.timeout, TimeoutError):
        raise AssertionError(f"the server kept the connection open for {seconds} s") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - started
