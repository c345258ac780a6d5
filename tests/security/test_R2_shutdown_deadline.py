"""R2-15 (issue 12): SIGTERM ends the process within SHUTDOWN_GRACE_SECONDS + SHUTDOWN_SETTLE_SECONDS,
even when a worker thread never returns.

The stuck thread is a real fault, injected from outside: the server runs on PostgreSQL and the test
holds ``LOCK TABLE api_keys`` in an open transaction, so the key lookup of a request with a key the
server has not cached waits on a worker thread for as long as the lock is held (PostgreSQL has no
statement timeout by default). A graceful shutdown used to wait for that thread forever: asyncio
cannot cancel a thread, and the interpreter joins its worker threads before it exits.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from .conftest import make_key, start_server, wait_until

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
GRACE, SETTLE = 1.0, 4.0
EXIT_STATUS = 70


@pytest.fixture
def postgres_url() -> Iterator[str]:
    name = f"modelhost_stuck_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _lock_waiters(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE NOT l.granted AND c.relname = 'api_keys'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_R2_15_sigterm_ends_a_server_whose_worker_thread_never_returns(tmp_path: Path, postgres_url: str) -> None:
    proc = start_server(
        tmp_path / "stuck",
        MODELHOST_DATABASE_URL=postgres_url,
        MODELHOST_SHUTDOWN_GRACE_SECONDS=str(GRACE),
        MODELHOST_SHUTDOWN_SETTLE_SECONDS=str(SETTLE),
        MODELHOST_EMBEDDING_MODEL_ENABLED="false",
        MODELHOST_CHAT_MODEL_EMBEDDINGS="false",
    )
    assert proc.proc is not None
    blocker = psycopg.connect(postgres_url)  # one open transaction holding the lock
    answered: dict[str, object] = {}

    def request() -> None:
        try:
            answer = httpx.get(f"{proc.base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=60)
            answered["status"], answered["body"] = answer.status_code, answer.json()
        except httpx.HTTPError as exc:
            answered["error"] = repr(exc)

    try:
        key = make_key(proc)["secret"]
        blocker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        client = threading.Thread(target=request)
        client.start()
        wait_until(lambda: _lock_waiters(postgres_url) > 0, 30)  # a server thread is stuck in the key lookup

        proc.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            status = proc.proc.wait(timeout=GRACE + SETTLE + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server still ran {GRACE + SETTLE + 10:g} s after SIGTERM")
        took = time.monotonic() - started
        client.join(timeout=10)

        assert status == EXIT_STATUS, proc.log()
        assert GRACE + SETTLE - 0.5 < took < GRACE + SETTLE + 4, took
        log = proc.log()
        assert "the shutdown did not finish within 5 s" in log and "Threads still running" in log, log
        assert "AnyIO worker thread" in log  # the stuck thread is named, with its stack
        # The request stuck in its key check was cut at the grace deadline like any other.
        assert answered.get("status") == 503, answered
        assert answered["body"]["error"]["code"] == "server_shutting_down"  # type: ignore[index]
    finally:
        blocker.close()
        proc.stop()
