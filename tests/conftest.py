"""Shared fixtures: one real server (bundled model) for the session, keys made through the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from serverproc import METRICS_TOKEN, MODEL, ServerProcess

# `database`: a migrated empty SQLite and PostgreSQL database, for any test that asks for one.
pytest_plugins = ["store.databases"]


@dataclass(frozen=True)
class Key:
    id: str
    secret: str
    organization: str
    project: str


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("modelhost-home"),
        # Short key cache so revocation tests do not wait long; 8 slots for concurrency tests; the
        # metrics token for tests that read the engine's slots from /health.
        env_overrides={"MODELHOST_KEY_CACHE_SECONDS": "0.5", "MODELHOST_SLOTS": "8", "MODELHOST_METRICS_TOKEN": METRICS_TOKEN},
    ).start()
    yield proc
    proc.stop()


def _key(server: ServerProcess, *args: str) -> Key:
    data = server.cli("keys", "create", *args)
    return Key(str(data["id"]), str(data["secret"]), str(data["organization"]), str(data["project"]))


@pytest.fixture(scope="session")
def project_key(server: ServerProcess) -> Key:
    return _key(server, "--name", "tests")


@pytest.fixture(scope="session")
def user_key(server: ServerProcess) -> Key:
    return _key(server, "--kind", "user", "--name", "tests-user")


@pytest.fixture
def make_key(server: ServerProcess):  # type: ignore[no-untyped-def]
    return lambda *args: _key(server, *args)


@pytest.fixture(scope="session")
def client(server: ServerProcess, project_key: Key) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url, api_key=project_key.secret, organization=project_key.organization, max_retries=0
    )


@pytest.fixture(scope="session")
def model() -> str:
    return MODEL


@pytest.fixture(scope="session")
def data_dir(server: ServerProcess) -> Path:
    return server.home
