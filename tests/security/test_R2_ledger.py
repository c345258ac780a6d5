"""R2-11 (issue #12, item 11): no window in which a crash or a failing database loses billed usage.

Each window gets a real `modelhost serve` on SQLite and on PostgreSQL:

- (a) `kill -9` after admission, before the first token: the row exists (pending, with its prompt
  tokens) the moment the request is admitted, and the restarted server settles it `interrupted`;
  a running request keeps the completion tokens its last heartbeat checkpointed. Reports count
  each such request once.
- (b) the store fails when the usage is settled: the write is retried, and the stream's usage chunk
  and `[DONE]` come only once the row is durable; past `LEDGER_SETTLE_WAIT_SECONDS` the stream ends
  with an error event and the row still lands when the database is back.
- (c) every row is written once: unique request ids, settle of a settled row changes nothing
  (also tests/store/test_ledger_pending.py, tests/pipeline/test_ledger_writer.py).
- A second replica on the same database never settles a live replica's pending rows, only a dead one's.

Faults are injected from outside, in the database itself: a trigger that makes every write to
`usage_records` fail until it is dropped.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import select

from modelhost.store import open_engine, session_factory
from modelhost.store.schema import UsageRecord
from serverproc import ServerProcess

from .conftest import long_chat, make_key, start_server, wait_until

HEARTBEAT = "1"  # seconds; a replica is presumed dead after 3 silent heartbeats


def _rows(url: str) -> dict[str, UsageRecord]:
    """Every ledger row, pending ones included, read straight from the database."""
    engine = open_engine(url)
    try:
        with session_factory(engine)() as session:
            return {r.request_id: r for r in session.scalars(select(UsageRecord))}
    finally:
        engine.dispose()


@contextlib.contextmanager
def failing_ledger_writes(url: str) -> Iterator[None]:
    """While inside, every INSERT or UPDATE of `usage_records` fails in the database."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as conn:
            for event in ("INSERT", "UPDATE"):
                conn.execute(
                    f"CREATE TRIGGER r2_fault_{event.lower()} BEFORE {event} ON usage_records "
                    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                )
            conn.commit()
        try:
            yield
        finally:
            with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as conn:
                conn.execute("DROP TRIGGER r2_fault_insert")
                conn.execute("DROP TRIGGER r2_fault_update")
                conn.commit()
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION r2_fault() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
        )
        conn.execute("CREATE TRIGGER r2_fault BEFORE INSERT OR UPDATE ON usage_records FOR EACH ROW EXECUTE FUNCTION r2_fault()")
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER r2_fault ON usage_records")
            conn.execute("DROP FUNCTION r2_fault()")


class Stream(threading.Thread):
    """A streamed chat request read on a thread: `events` are the `data:` payloads as they arrive."""

    def __init__(self, proc: ServerProcess, key: str, body: dict[str, object]) -> None:
        super().__init__(daemon=True)
        self.url = f"{proc.base_url}/chat/completions"
        self.key = key
        self.body = body
        self.events: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, headers={"Authorization": f"Bearer {self.key}"}, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
        except httpx.HTTPError as exc:  # the server was killed under it
            self.error = exc

    @property
    def chunks(self) -> list[dict]:  # type: ignore[type-arg]
        return [json.loads(e) for e in list(self.events) if e != "[DONE]"]

    @property
    def request_id(self) -> str:
        return str(self.chunks[0]["id"])

    def content(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c.get("choices"))

    def finished(self) -> bool:
        return any(c["choices"] and c["choices"][0]["finish_reason"] for c in self.chunks)


def _log(proc: ServerProcess) -> str:
    assert proc.log_path is not None
    return proc.log_path.read_text(errors="replace")


def _usage_report(proc: ServerProcess, organization: str) -> list[dict[str, object]]:
    return proc.cli("usage", "--org", organization)["data"]  # type: ignore[return-value]


def test_R2_11a_kill_9_before_the_first_token_leaves_a_row_with_the_prompt_tokens(tmp_path: Path, database_url: str) -> None:
    env = {"MODELHOST_DATABASE_URL": database_url, "MODELHOST_SLOTS": "1", "MODELHOST_LEDGER_HEARTBEAT_SECONDS": HEARTBEAT}
    proc = start_server(tmp_path / "a", **env)
    assert proc.proc is not None
    key = make_key(proc)
    # One long generation holds the only slot; the second request is admitted and waits in the queue.
    running = Stream(proc, key["secret"], long_chat(1900, stream=True))
    running.start()
    wait_until(lambda: running.content(), 60)
    queued = Stream(proc, key["secret"], long_chat(1900, stream=True))
    queued.start()
    wait_until(lambda: queued.events, 30)  # its role chunk: admitted, and no token can come before the slot frees
    rows = _rows(database_url)
    assert rows[queued.request_id].outcome == "pending" and rows[queued.request_id].prompt_tokens > 0
    # The heartbeat checkpoints the running request's completion tokens into its pending row.
    checkpoint = wait_until(lambda: _rows(database_url)[running.request_id].completion_tokens, 30)

    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(timeout=10)
    running.join(10)
    queued.join(10)
    assert queued.content() == "", "the queued request got a token: the window under test was missed"
    rows = _rows(database_url)
    assert {rows[s.request_id].outcome for s in (running, queued)} == {"pending"}

    restarted = ServerProcess(proc.home, env_overrides=env, port=proc.port).start()
    try:
        # The restarted replica settles the dead one's rows once its heartbeat is 3 beats old.
        wait_until(lambda: {_rows(database_url)[s.request_id].outcome for s in (running, queued)} == {"interrupted"}, 30)
        probe = httpx.post(
            f"{restarted.base_url}/chat/completions", headers={"Authorization": f"Bearer {key['secret']}"}, timeout=60,
            json={**long_chat(1, stream=False)},
        ).json()
        prompt = probe["usage"]["prompt_tokens"]
        rows = _rows(database_url)
        assert (rows[queued.request_id].prompt_tokens, rows[queued.request_id].completion_tokens) == (prompt, 0)
        assert rows[running.request_id].prompt_tokens == prompt
        assert rows[running.request_id].completion_tokens >= checkpoint > 0
        assert len(rows) == 3, "one row per request, nothing else"
        # Reports count each interrupted request once, with what is known of it.
        [report] = _usage_report(restarted, key["organization"])
        assert (report["requests"], report["prompt_tokens"]) == (3, 3 * prompt)
        assert report["completion_tokens"] == rows[running.request_id].completion_tokens + 1
    finally:
        restarted.stop()


def test_R2_11b_done_waits_until_the_usage_row_is_durable_through_a_failing_store(tmp_path: Path, database_url: str) -> None:
    proc = start_server(tmp_path / "b", MODELHOST_DATABASE_URL=database_url)
    try:
        key = make_key(proc)
        stream = Stream(proc, key["secret"], long_chat(24, stream=True, stream_options={"include_usage": True}))
        stream.start()
        wait_until(lambda: stream.content(), 60)  # admitted and generating
        request_id = stream.request_id
        with failing_ledger_writes(database_url):
            wait_until(stream.finished, 60)
            # The store refused the usage several times; the stream holds its usage chunk and [DONE].
            wait_until(lambda: _log(proc).count(f"could not write the usage of {request_id}") >= 3, 30)
            assert "[DONE]" not in stream.events
            assert not any(c.get("usage") for c in stream.chunks)
            assert _rows(database_url)[request_id].outcome == "pending"
        stream.join(30)
        assert stream.events[-1] == "[DONE]"
        usage = json.loads(stream.events[-2])["usage"]
        row = _rows(database_url)[request_id]
        assert (row.outcome, row.prompt_tokens, row.completion_tokens) == (
            "completed", usage["prompt_tokens"], usage["completion_tokens"]
        )
        assert usage["completion_tokens"] == 24
        assert [r.request_id for r in _rows(database_url).values()] == [request_id]  # exactly one row
    finally:
        proc.stop()


def test_R2_11b_a_store_down_past_the_wait_ends_the_stream_without_done_and_the_row_lands_later(
    tmp_path: Path, database_url: str
) -> None:
    proc = start_server(
        tmp_path / "b2",
        MODELHOST_DATABASE_URL=database_url,
        MODELHOST_LEDGER_SETTLE_WAIT_SECONDS="1",
        MODELHOST_LEDGER_HEARTBEAT_SECONDS=HEARTBEAT,
    )
    try:
        key = make_key(proc)
        # Long enough that the store fails well before the stream ends, however fast the machine is.
        stream = Stream(proc, key["secret"], long_chat(200, stream=True, stream_options={"include_usage": True}))
        stream.start()
        wait_until(lambda: stream.content(), 60)
        request_id = stream.request_id
        with failing_ledger_writes(database_url):
            stream.join(60)
            assert json.loads(stream.events[-1])["error"]["code"] == "usage_not_recorded"
            assert "[DONE]" not in stream.events and not any(c.get("usage") for c in stream.chunks[:-1])
            time.sleep(2.5)  # two more heartbeats: the background keeps the write
            assert _rows(database_url)[request_id].outcome == "pending"
        row = wait_until(lambda: (r := _rows(database_url)[request_id]).outcome == "completed" and r, 15)
        assert (row.completion_tokens, len(_rows(database_url))) == (200, 1)
        assert "recorded after the database came back" in _log(proc)
    finally:
        proc.stop()


def test_R2_11_a_second_replica_settles_only_a_dead_replicas_pending_rows(tmp_path: Path) -> None:
    name = f"modelhost_r2_{uuid.uuid4().hex[:10]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    env = {"MODELHOST_DATABASE_URL": url, "MODELHOST_LEDGER_HEARTBEAT_SECONDS": HEARTBEAT}
    first = start_server(tmp_path / "first", **env)
    second: ServerProcess | None = None
    try:
        assert first.proc is not None
        key = make_key(first)
        stream = Stream(first, key["secret"], long_chat(1900, stream=True))
        stream.start()
        wait_until(lambda: stream.content(), 60)
        second = start_server(tmp_path / "second", **env)  # its startup sweep and every heartbeat after
        time.sleep(5)  # 5 of its heartbeats, more than the 3 that make a replica dead
        assert _rows(url)[stream.request_id].outcome == "pending", "a live replica's row was swept"
        assert "as interrupted" not in _log(second)

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        stream.join(10)
        row = wait_until(lambda: (r := _rows(url)[stream.request_id]).outcome == "interrupted" and r, 30)
        assert row.prompt_tokens > 0 and row.completion_tokens > 0  # the checkpoint of its last heartbeat
        assert stream.request_id in _log(second)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
