"""Fixtures for the limits tests: each limit store, behind the same contract, on a clock we move."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
import redis

from modelhost.limits.base import LimitBackend
from modelhost.limits.memory import MemoryBackend
from modelhost.limits.redis_backend import RedisBackend

REDIS_URL = "redis://127.0.0.1:6379/0"
T = TypeVar("T")


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Store:
    """One limit store under test.

    `peer()` is another handle on the same counters, as a second replica would hold (for Redis a
    new client, which the caller closes on the loop that used it; in-process, the same object).
    """

    kind: str
    backend: LimitBackend
    clock: FakeClock
    prefix: str
    peer: Callable[[], LimitBackend]
    opened: list[LimitBackend] = field(default_factory=list)

    def key(self, name: str) -> str:
        return f"{self.prefix}{{org-test}}:{name}"

    def run(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run `body` on a fresh event loop, closing every Redis handle it used before the loop ends."""

        async def main() -> T:
            try:
                return await body()
            finally:
                for backend in self.opened:
                    await backend.close()

        return asyncio.run(main())


def _cleanup(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    clock = FakeClock()
    prefix = f"modelhost-test-{uuid.uuid4().hex[:12]}:"
    if request.param == "memory":
        backend = MemoryBackend(clock=clock)
        yield Store("memory", backend, clock, prefix, peer=lambda: backend)
        return
    main = RedisBackend(REDIS_URL, clock=clock)
    try:
        yield Store("redis", main, clock, prefix, peer=lambda: RedisBackend(REDIS_URL, clock=clock), opened=[main])
    finally:
        _cleanup(prefix)


needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server for a Redis of its own")


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway `redis-server` of this test alone (no persistence), as a redis:// URL.

    For tests that wipe Redis (FLUSHALL, a stop): the shared one on 6379 holds other tests' keys.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port, socket_timeout=0.5).ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
