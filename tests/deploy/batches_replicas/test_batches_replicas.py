"""Batches survive a replica's death and are shared by replicas, through the SDK and the real model.

- SQLite, one replica, SIGKILL mid-batch, restarted on the same data directory: the batch resumes
  with the lines not yet done, `request_counts` are exact, each custom_id is in the output once,
  and there is one completed ledger row per line (a line cut by the kill has an `interrupted` row,
  never a second completed one).
- PostgreSQL, two replicas, one batch: both run its lines (their ledger rows name both replicas),
  each custom_id is in the output once.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from modelhost.config import Settings
from modelhost.store import open_engine, session_factory
from modelhost.store.schema import UsageRecord
from serverproc import ServerProcess

from .conftest import ENV, LEASE_SECONDS, batch_input, client_of, postgres, wait_for  # noqa: F401


def _ledger(database_url: str, request_ids: set[str] | None) -> list[UsageRecord]:
    """The ledger rows of `request_ids` (None: all of them)."""
    engine = open_engine(database_url)
    try:
        with session_factory(engine)() as session:
            query = select(UsageRecord)
            if request_ids is not None:
                query = query.where(UsageRecord.request_id.in_(request_ids))
            return list(session.scalars(query))
    finally:
        engine.dispose()


def _output(client, file_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines()]


def test_kill_9_mid_batch_then_restart_resumes_with_every_line_exactly_once(tmp_path: Path) -> None:
    lines = 10
    server = ServerProcess(tmp_path / "home", env_overrides=ENV).start(90.0)
    try:
        key = server.cli("keys", "create", "--name", "batches")
        client = client_of(server, str(key["secret"]))
        file = client.files.create(file=("in.jsonl", batch_input(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2, 120)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        before = client_of(server.start(90.0), str(key["secret"])).batches.retrieve(batch.id)
        assert before.status == "in_progress" and 2 <= before.request_counts.completed < lines

        done = wait_for(client, batch.id, lambda b: b.status == "completed", 240)

        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (lines, lines, 0)
        output = _output(client, done.output_file_id)
        assert sorted(Counter(line["custom_id"] for line in output).items()) == sorted((f"r{i}", 1) for i in range(lines))
        assert done.error_file_id is None
        ids = {line["response"]["body"]["id"] for line in output}
        rows = _ledger(Settings(home=server.home).resolved_database_url(), ids)
        assert sorted(r.request_id for r in rows if r.outcome == "completed") == sorted(ids) and all(r.batch for r in rows)
        everything = _ledger(Settings(home=server.home).resolved_database_url(), None)
        assert sum(1 for r in everything if r.batch and r.outcome == "completed") == lines  # none run twice
        assert sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output) == done.usage.input_tokens
    finally:
        server.stop()


def test_two_replicas_on_postgresql_share_one_batch(tmp_path: Path, postgres: str) -> None:  # noqa: F811
    env = {**ENV, "MODELHOST_DATABASE_URL": postgres, "MODELHOST_FILES_DIR": str(tmp_path / "files")}  # one blob store
    a = ServerProcess(tmp_path / "a", env_overrides=env).start(90.0)
    b = ServerProcess(tmp_path / "b", env_overrides=env).start(90.0)
    try:
        key = a.cli("keys", "create", "--name", "batches")
        client = client_of(a, str(key["secret"]))
        file = client.files.create(file=("in.jsonl", batch_input(12, max_tokens=16)), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        done = wait_for(client_of(b, str(key["secret"])), batch.id, lambda now: now.status == "completed", 240)

        assert (done.request_counts.completed, done.request_counts.failed) == (12, 0)
        output = _output(client, done.output_file_id)
        assert sorted(Counter(line["custom_id"] for line in output).values()) == [1] * 12
        rows = _ledger(postgres, {line["response"]["body"]["id"] for line in output})
        assert len(rows) == 12 and len({r.replica_id for r in rows}) == 2, "both replicas ran lines"
        assert all(r.batch for r in rows)
    finally:
        b.stop()
        a.stop()


def test_a_replica_killed_mid_batch_leaves_its_lines_to_the_other(tmp_path: Path, postgres: str) -> None:  # noqa: F811
    env = {**ENV, "MODELHOST_DATABASE_URL": postgres, "MODELHOST_FILES_DIR": str(tmp_path / "files")}
    a = ServerProcess(tmp_path / "a", env_overrides=env).start(90.0)
    b = ServerProcess(tmp_path / "b", env_overrides=env).start(90.0)
    try:
        key = a.cli("keys", "create", "--name", "batches-kill")
        client = client_of(a, str(key["secret"]))
        file = client.files.create(file=("in.jsonl", batch_input(12, max_tokens=16)), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(client, batch.id, lambda now: now.request_counts.completed >= 2, 120)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()

        survivor = client_of(b, str(key["secret"]))
        done = wait_for(survivor, batch.id, lambda now: now.status == "completed", 240)

        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 12, 0)
        output = _output(survivor, done.output_file_id)
        assert sorted(Counter(line["custom_id"] for line in output).values()) == [1] * 12
        rows = _ledger(postgres, {line["response"]["body"]["id"] for line in output})
        assert len(rows) == 12 and all(r.outcome == "completed" and r.batch for r in rows)
        assert sum(1 for r in _ledger(postgres, None) if r.batch and r.outcome == "completed") == 12  # none run twice
    finally:
        b.stop()
        a.stop()
