"""Graceful shutdown (SIGTERM) and crash consistency (kill -9 under load): the ledger stays exact."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from modelhost.store import UsageLedger, open_engine, session_factory
from serverproc import MODEL, ServerProcess

from .conftest import engine_state, long_chat, make_key, start_server, wait_until


def _stream(url: str, auth: dict[str, str], body: dict[str, object], out: dict[str, object]) -> None:
    with httpx.stream("POST", url, json=body, headers=auth, timeout=60) as response:
        out["status"] = response.status_code
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    out["events"] = events


def test_graceful_shutdown_finishes_streams_cuts_the_rest_at_the_grace_deadline_and_exits_0(tmp_path: Path) -> None:
    # A grace period long enough for the short stream even on a loaded 2-core machine.
    proc = start_server(tmp_path / "shutdown", MODELHOST_SHUTDOWN_GRACE_SECONDS="8")
    assert proc.proc is not None
    auth = {"Authorization": f"Bearer {make_key(proc)['secret']}"}
    url = f"{proc.base_url}/chat/completions"
    short: dict[str, object] = {}
    long: dict[str, object] = {}
    threads = [
        threading.Thread(target=_stream, args=(url, auth, long_chat(20, stream=True, stream_options={"include_usage": True}), short)),
        threading.Thread(target=_stream, args=(url, auth, long_chat(1900, stream=True), long)),
    ]
    for t in threads:
        t.start()
    wait_until(lambda: engine_state(proc)["slots_busy"] == 2, 30)
    proc.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    time.sleep(0.5)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", proc.port), timeout=2).close()
    assert proc.proc.wait(timeout=30) == 0
    took = time.monotonic() - started
    for t in threads:
        t.join(timeout=10)
    assert short["events"][-1] == "[DONE]"  # finished inside the grace period
    assert json.loads(long["events"][-1])["error"]["code"] == "server_shutting_down"  # cut at the deadline
    assert 7.5 < took < 30, took
    entries = UsageLedger(session_factory(open_engine(f"sqlite:///{proc.home / 'modelhost.db'}"))).entries()
    assert sorted(e.outcome for e in entries) == ["cancelled", "completed"]
    usage = json.loads(short["events"][-2])["usage"]
    completed = next(e for e in entries if e.outcome == "completed")
    assert (completed.prompt_tokens, completed.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert 0 < next(e for e in entries if e.outcome == "cancelled").completion_tokens < 1900


def _load(proc: ServerProcess, auth: dict[str, str], count: int, seen: dict[str, dict[str, int]], started: list[str]) -> None:
    """`count` requests, 4 at a time, half streamed; records the id and usage of each that completed."""
    url = f"{proc.base_url}/chat/completions"

    def one(i: int) -> None:
        body = long_chat(8 + (i % 5) * 25, stream=bool(i % 2), stream_options={"include_usage": True} if i % 2 else None)
        if not i % 2:
            body.pop("stream_options")
        try:
            if i % 2:
                with httpx.stream("POST", url, json=body, headers=auth, timeout=60) as response:
                    events = []
                    for line in response.iter_lines():
                        if line.startswith("data: {"):
                            chunk = json.loads(line[6:])
                            if not events:
                                started.append(chunk["id"])
                            events.append(chunk)
                        elif line == "data: [DONE]":
                            seen[events[-1]["id"]] = events[-1]["usage"]
            else:
                response = httpx.post(url, json=body, headers=auth, timeout=60)
                if response.status_code == 200:
                    seen[response.json()["id"]] = response.json()["usage"]
        except httpx.HTTPError:
            pass  # the server was killed under this request

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))


def _check_ledger(url: str, seen: dict[str, dict[str, int]], started: list[str], sent: int) -> int:
    entries = UsageLedger(session_factory(open_engine(url))).entries(include_pending=True)
    ids = [e.request_id for e in entries]
    assert len(ids) == len(set(ids)), "duplicate ledger rows"
    rows = {e.request_id: e for e in entries}
    for request_id, usage in seen.items():  # every request the client saw complete is recorded, exactly
        row = rows[request_id]
        assert (row.prompt_tokens, row.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"]), request_id
        assert row.outcome == "completed"
    for request_id in started:  # every stream that started was admitted, so it has a row (pending if cut)
        assert rows[request_id].prompt_tokens > 0, request_id
    assert len(rows) <= sent  # no rows for requests never sent
    return len(rows)


def _pending(url: str) -> list[str]:
    return [e.request_id for e in UsageLedger(session_factory(open_engine(url))).entries(include_pending=True) if e.outcome == "pending"]




def test_kill_9_under_load_loses_no_completed_request_and_duplicates_nothing(tmp_path: Path, database_url: str) -> None:
    env = {"MODELHOST_DATABASE_URL": database_url, "MODELHOST_SLOTS": "4", "MODELHOST_LEDGER_HEARTBEAT_SECONDS": "1"}
    proc = start_server(tmp_path / "crash", **env)
    assert proc.proc is not None
    auth = {"Authorization": f"Bearer {make_key(proc)['secret']}"}
    seen: dict[str, dict[str, int]] = {}
    started: list[str] = []
    sent = 24
    loader = threading.Thread(target=_load, args=(proc, auth, sent, seen, started))
    loader.start()
    wait_until(lambda: len(seen) >= 4, 120)  # some finished, others in flight
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(timeout=10)
    loader.join(timeout=120)
    assert len(seen) < sent, "the kill landed after the load; nothing was cut"
    rows = _check_ledger(database_url, seen, started, sent)
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    restarted = ServerProcess(proc.home, env_overrides=env, port=proc.port).start()
    try:
        after = httpx.post(f"{restarted.base_url}/chat/completions", headers=auth, timeout=60,
                           json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}).json()
        seen[after["id"]] = after["usage"]
        assert _check_ledger(database_url, seen, started, sent + 1) == rows + 1
        # The rows the killed process left pending are settled by the new one, none twice.
        wait_until(lambda: not _pending(database_url), 30)
        assert _check_ledger(database_url, seen, started, sent + 1) == rows + 1
    finally:
        restarted.stop()
    print(f"crash[{database_url.split(':')[0]}]: sent {sent}, completed {len(seen) - 1}, rows {rows}, killed 1, lost 0")
