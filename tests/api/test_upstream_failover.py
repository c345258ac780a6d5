"""Kill one of two upstream replicas under load: requests fail over, none is lost or run twice, and
the ledger holds every attempt exactly once.

The pool is two modelhost processes (bundled model) sharing one store; modelhost in front of them
balances by requests in flight. One replica is SIGKILLed while it is generating. Requests that had
not reached it are retried on the other replica before any byte was sent; requests it was running
fail with a 502 (or, for a stream that had started, an error event) and the SDK's own retries
(non-streaming) land on the survivor. Load is bounded: 20 requests of at most 4 tokens, 4 at a time.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from serverproc import MODEL, ServerProcess, ledger_of
from support.proxy import openai_model, proxy, replica_ledger, replicas, sse_events

HI = [{"role": "user", "content": "Count to ten."}]


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def pool(pool_dir: Path) -> Iterator[list[ServerProcess]]:
    servers = replicas(pool_dir, 2)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def front(pool_dir: Path, pool: list[ServerProcess]) -> Iterator[ServerProcess]:
    key = str(pool[0].cli("keys", "create", "--name", "proxy")["secret"])
    models = openai_model("smol-pool", [s.base_url for s in pool], MODEL, key=True, health_interval_seconds=1, cooldown_seconds=30)
    server = proxy(pool_dir / "front", models, upstream_key=key)
    yield server
    server.stop()


def busy_slots(server: ServerProcess) -> int:
    try:
        engines = server.health()["engines"]
    except httpx.HTTPError:
        return 0
    return int(engines[0]["slots_busy"]) + int(engines[0]["queue_depth"])  # type: ignore[index]


def test_killing_a_replica_under_load_loses_and_duplicates_nothing(front: ServerProcess, pool: list[ServerProcess], pool_dir: Path) -> None:
    secret = str(front.cli("keys", "create", "--name", "load")["secret"])
    client = openai.OpenAI(base_url=front.base_url, api_key=secret, max_retries=3)
    done = threading.Semaphore(0)

    def whole(i: int) -> tuple[str, int, int]:
        completion = client.chat.completions.create(model="smol-pool", messages=HI, max_tokens=4, seed=i)  # type: ignore[arg-type]
        done.release()
        assert completion.usage is not None
        return completion.id, completion.usage.prompt_tokens, completion.usage.completion_tokens

    def streamed(i: int) -> tuple[str, str]:
        body = {"model": "smol-pool", "messages": HI, "max_tokens": 4, "seed": i, "stream": True}
        with httpx.stream("POST", f"{front.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=60) as response:
            if response.status_code != 200:  # failed before any output: a plain error, the SDK would retry it
                return "", f"http {response.status_code}"
            events = list(sse_events(response))
        done.release()
        first = json.loads(events[0])
        if events[-1] == "[DONE]":
            return first["id"], "done"
        assert json.loads(events[-1])["error"]["type"] == "server_error", events[-1]
        return first["id"], "error event"

    survivor, victim = pool
    with ThreadPoolExecutor(4) as workers:
        futures = [workers.submit(streamed if i % 5 == 4 else whole, i) for i in range(20)]
        for _ in range(4):
            assert done.acquire(timeout=120), "no progress under load"
        deadline = time.monotonic() + 10
        while busy_slots(victim) == 0:
            assert time.monotonic() < deadline, "the replica to kill never had work"
            time.sleep(0.01)
        assert victim.proc is not None
        victim.proc.kill()  # SIGKILL while it holds requests: no graceful anything
        victim.proc.wait()
        results = [f.result(timeout=180) for f in futures]

    wholes = [r for r in results if len(r) == 3]
    streams = [r for r in results if len(r) == 2]
    assert len(wholes) == 16  # every non-streamed request was answered (after the SDK's retries at most)
    assert all(outcome in ("done", "error event", "http 502", "http 504") for _, outcome in streams), streams

    # The ledger: every answered request exactly once, with the usage the client was shown.
    entries = ledger_of(front).entries()
    by_id = Counter(e.request_id for e in entries)
    assert all(count == 1 for count in by_id.values()), "a request id was recorded twice"
    rows = {e.request_id: e for e in entries}
    for request_id, prompt_tokens, completion_tokens in wholes:
        row = rows[request_id]
        assert (row.outcome, row.prompt_tokens, row.completion_tokens) == ("completed", prompt_tokens, completion_tokens)
    for request_id, outcome in streams:
        if request_id:
            assert rows[request_id].outcome == ("completed" if outcome == "done" else "failed")
    answered = {r[0] for r in wholes} | {r[0] for r in streams if r[1] == "done"}
    failed = [e for e in entries if e.request_id not in answered]
    assert all(e.outcome == "failed" for e in failed)  # attempts cut by the kill, each recorded once

    # Nothing ran upstream that modelhost did not send once: no generation is duplicated by a retry here.
    upstream = replica_ledger(pool_dir).entries()
    assert len(upstream) <= len(entries)
    assert sum(e.outcome == "completed" for e in upstream) >= len(answered)

    # The dead replica's circuit opens (health checks); later requests go to the survivor only.
    deadline = time.monotonic() + 10
    while True:
        replicas_state = front.health()["engines"][0]["replicas"]  # type: ignore[index]
        if replicas_state[1]["circuit"] == "open":
            break
        assert time.monotonic() < deadline, replicas_state
        time.sleep(0.2)
    before = len(ledger_of(front).entries())
    for i in range(3):
        assert client.with_options(max_retries=0).chat.completions.create(model="smol-pool", messages=HI, max_tokens=2, seed=100 + i).choices  # type: ignore[arg-type]
    after = ledger_of(front).entries()[before:]
    assert [e.outcome for e in after] == ["completed"] * 3
    assert survivor.proc is not None and survivor.proc.poll() is None
