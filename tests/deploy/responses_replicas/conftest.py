"""Two `modelhost serve` replicas sharing a fresh PostgreSQL database and Redis, for the Responses
deployment tests beside it.

The heartbeat is 1 s, so a replica that dies is presumed dead after `STALE_SECONDS` (3 s) instead
of the default 30 s: that is the window in which the others fail its background responses
(responses.context.get) and sweep its pending ledger rows (pipeline.ledger_writer).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import redis

from modelhost.pipeline.ledger_writer import STALE_HEARTBEATS
from serverproc import ServerProcess, private_database

REDIS_URL = "redis://127.0.0.1:6379/0"
HEARTBEAT_SECONDS = 1.0
STALE_SECONDS = STALE_HEARTBEATS * HEARTBEAT_SECONDS


@dataclass(frozen=True)
class Tenant:
    organization: str
    project: str
    secret: str

    def client(self, server: ServerProcess) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.base_url, api_key=self.secret, max_retries=0, timeout=120)


def new_tenant(server: ServerProcess, name: str, organization: str | None = None) -> Tenant:
    """A new project (in `organization`, else the first one) with an inference key, made through `server`'s CLI."""
    organization = organization or str(server.cli("orgs", "list")["data"][0]["id"])  # type: ignore[index]
    project = str(server.cli("projects", "create", name, "--org", organization)["id"])
    key = server.cli("keys", "create", "--project", project, "--org", organization)
    return Tenant(organization, project, str(key["secret"]))


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A PostgreSQL database of our own, empty (the replicas migrate it), dropped afterwards."""
    with private_database("modelhost_responses") as url:
        yield url


@pytest.fixture(scope="module")
def fleet_env(database: str) -> Iterator[dict[str, str]]:
    """The environment every replica of the module shares; its Redis keys are deleted afterwards."""
    prefix = f"modelhost-responses-{uuid.uuid4().hex[:12]}"
    yield {
        "MODELHOST_DATABASE_URL": database,
        "MODELHOST_REDIS_URL": REDIS_URL,
        "MODELHOST_REDIS_KEY_PREFIX": prefix,
        "MODELHOST_LIMITS_CACHE_SECONDS": "0",
        "MODELHOST_LEDGER_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "MODELHOST_EMBEDDING_MODEL_ENABLED": "false",
        "MODELHOST_SLOTS": "2",
        "MODELHOST_THREADS": "1",
    }
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
    finally:
        client.close()


def start_replicas(homes: list[Path], env: dict[str, str]) -> list[ServerProcess]:
    """Replicas started at once (each loads the model); all stopped if any fails to start."""
    fleet = [ServerProcess(home, env_overrides=env) for home in homes]
    try:
        with ThreadPoolExecutor(len(fleet)) as pool:
            for started in [pool.submit(replica.start, 90.0) for replica in fleet]:
                started.result()
    except BaseException:
        for replica in fleet:
            replica.stop()
        raise
    return fleet


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, fleet_env: dict[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a, b = start_replicas([tmp_path_factory.mktemp("replica-a"), tmp_path_factory.mktemp("replica-b")], fleet_env)
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()
