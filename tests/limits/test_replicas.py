"""Two `modelhost serve` processes sharing PostgreSQL and Redis hold limits and quotas as one
server; a Redis that stops answering turns generation into 503, never into unchecked requests."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from serverproc import MODEL, ServerProcess, free_port, private_database
from modelhost.store import UsageLedger, open_engine, session_factory

from .conftest import REDIS_URL, _cleanup
from .test_http import HI, ONE_TOKEN, new_tenant



@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A PostgreSQL database of our own, dropped afterwards."""
    with private_database("modelhost_limits") as url:
        yield url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    prefix = f"modelhost-test-{uuid.uuid4().hex[:12]}"
    env = {
        "MODELHOST_DATABASE_URL": database,
        "MODELHOST_REDIS_URL": REDIS_URL,
        "MODELHOST_REDIS_KEY_PREFIX": prefix,
        "MODELHOST_LIMITS_CACHE_SECONDS": "0",
        "MODELHOST_SLOTS": "2",
        "MODELHOST_THREADS": "1",
    }
    first = ServerProcess(tmp_path_factory.mktemp("replica-a"), env_overrides=env).start()
    second = ServerProcess(tmp_path_factory.mktemp("replica-b"), env_overrides=env)
    try:
        second.start()
        yield first, second
    finally:
        second.stop()
        first.stop()
        _cleanup(prefix)


def test_fifty_requests_across_two_replicas_against_a_one_request_budget(
    replicas: tuple[ServerProcess, ServerProcess], database: str
) -> None:
    a, b = replicas
    tenant = new_tenant(a, "Shared budget")
    sizing = new_tenant(b, "Sizing")
    prompt = sizing.client(b).chat.completions.create(model=MODEL, messages=HI, **ONE_TOKEN).usage.prompt_tokens  # type: ignore[union-attr]
    b.cli("quotas", "set", "--project", tenant.project, "--hard", str(prompt + 1))  # set through the other replica

    async def fire() -> list[object]:
        clients = [tenant.async_client(a, max_retries=2), tenant.async_client(b, max_retries=2)]
        try:
            return await asyncio.gather(
                *(clients[i % 2].chat.completions.create(model=MODEL, messages=HI, **ONE_TOKEN) for i in range(50)),
                return_exceptions=True,
            )
        finally:
            for client in clients:
                await client.close()

    results = asyncio.run(fire())
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(done) == 1, [type(r).__name__ for r in results]
    assert len(refused) == 49 and all(r.code == "insufficient_quota" for r in refused)
    ledger = UsageLedger(session_factory(open_engine(database)))
    rows = [e for e in ledger.entries() if e.project_id == tenant.project]
    assert len(rows) == 1  # the ledger in PostgreSQL agrees: one generation ran


def test_a_rate_limit_holds_across_replicas(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    tenant = new_tenant(a, "Shared rate")
    a.cli("limits", "set", "--project", tenant.project, "--rpm", "3")  # one request refills every 20 s
    clients = [tenant.client(a), tenant.client(b)]
    outcomes = []
    for i in range(6):
        try:
            raw = clients[i % 2].chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=1)
            outcomes.append(raw.headers["x-ratelimit-remaining-requests"])
        except openai.RateLimitError as exc:
            outcomes.append(exc.code)
    assert outcomes == ["2", "1", "0", "rate_limit_exceeded", "rate_limit_exceeded", "rate_limit_exceeded"]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to start a throwaway Redis")
def test_redis_stopped_means_503_then_recovery(tmp_path: Path) -> None:
    port = free_port()

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=port, socket_timeout=0.5).ping():
                    return proc
            except redis.RedisError:
                time.sleep(0.05)
        proc.kill()
        raise RuntimeError("throwaway redis-server did not start")

    throwaway = start_redis()
    server = ServerProcess(
        tmp_path / "home",
        env_overrides={"MODELHOST_REDIS_URL": f"redis://127.0.0.1:{port}/0", "MODELHOST_REDIS_TIMEOUT_SECONDS": "0.5"},
    )
    try:
        server.start()
        tenant = new_tenant(server, "Fragile")
        server.cli("quotas", "set", "--project", tenant.project, "--hard", "100000")
        client = tenant.client(server)
        assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1).choices

        throwaway.kill()
        throwaway.wait()
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
        assert time.monotonic() - started < 5
        error = refused.value
        assert error.status_code == 503 and error.code == "limits_unavailable"
        assert "cannot be checked" in error.message and "redis://" not in error.message
        streamed = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": MODEL, "messages": HI, "max_tokens": 1, "stream": True},
            headers={"Authorization": f"Bearer {tenant.secret}"},
            timeout=10,
        )
        assert streamed.status_code == 503  # refused before the stream starts
        assert server.health()  # the server itself stays up
        assert httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {tenant.secret}"}, timeout=5).status_code == 200

        throwaway = start_redis()  # back, empty: the quota counter is rebuilt from the ledger
        assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1).choices
    finally:
        server.stop()
        throwaway.kill()
        throwaway.wait()
