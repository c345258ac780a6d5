"""Helpers for tests that run modelhost in front of other OpenAI-compatible servers.

`replicas(tmp, n)` starts `n` modelhost processes serving the bundled model from one shared SQLite
store (so one upstream key works on all of them and their ledgers are one table, as replicas sharing
PostgreSQL would be). `openai_model(...)` writes one `[[models]]` entry of a models file; `proxy(...)`
starts the modelhost that reads it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from serverproc import METRICS_TOKEN, ServerProcess

UPSTREAM_KEY_ENV = "MODELHOST_TEST_UPSTREAM_KEY"
# Replicas and the proxy: one thread each, no embedding models (not what these tests are about), the
# metrics token for /health's details (slots, queues, replica circuits).
LEAN = {
    "MODELHOST_METRICS_TOKEN": METRICS_TOKEN,
    "MODELHOST_THREADS": "1",
    "MODELHOST_EMBEDDING_MODEL_ENABLED": "false",
    "MODELHOST_CHAT_MODEL_EMBEDDINGS": "false",
}


def replicas(tmp: Path, n: int) -> list[ServerProcess]:
    """`n` modelhost processes (bundled model, 4 slots) sharing one store; started one after the other."""
    env = {**LEAN, "MODELHOST_DATABASE_URL": f"sqlite:///{tmp / 'replicas.db'}", "MODELHOST_SLOTS": "4"}
    started: list[ServerProcess] = []
    try:
        for i in range(n):
            started.append(ServerProcess(tmp / f"replica-{i}", env_overrides=dict(env)).start())
    except BaseException:
        for server in started:
            server.stop()
        raise
    return started


def replica_ledger(tmp: Path):  # type: ignore[no-untyped-def]
    from modelhost.store import UsageLedger, open_engine, session_factory

    return UsageLedger(session_factory(open_engine(f"sqlite:///{tmp / 'replicas.db'}")))


def openai_model(model_id: str, urls: list[str], upstream: str, *, key: bool = False, extra: str = "", **backend: object) -> str:
    options = "".join(f"{k} = {json.dumps(v)}\n" for k, v in backend.items())
    return (
        f'[[models]]\nid = "{model_id}"\ncontext_length = 2048\n{extra}\n[models.backend]\ntype = "openai"\n'
        f"base_urls = {json.dumps(urls)}\nmodel = \"{upstream}\"\n"
        + (f'api_key_env = "{UPSTREAM_KEY_ENV}"\n' if key else "")
        + options
        + "\n"
    )


def proxy(home: Path, models: str, *, upstream_key: str | None = None, env: dict[str, str] | None = None) -> ServerProcess:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "models.toml"
    path.write_text(models)
    overrides = {**LEAN, "MODELHOST_MODELS_FILE": str(path), **(env or {})}
    if upstream_key is not None:
        overrides[UPSTREAM_KEY_ENV] = upstream_key
    return ServerProcess(home, env_overrides=overrides).start()


def reload_models(server: ServerProcess, models: str, ready: Callable[[], bool], timeout: float = 15.0) -> None:
    """Rewrite the server's models file, send SIGHUP, and wait until `ready()`."""
    (server.home / "models.toml").write_text(models)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"the reload did not take effect:\n{server.log()}"
        time.sleep(0.1)


def model_ids(server: ServerProcess, secret: str) -> list[str]:
    response = httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert response.status_code == 200, response.text
    return [m["id"] for m in response.json()["data"]]


def sse_events(response: httpx.Response) -> Iterator[str]:
    """The `data` of each server-sent event of a streamed response, as text."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]
