"""R15: a batch stops when the key that created it stops working (SECURITY.md A5: revoked credentials
stop everything). Its lines ran as the stored key id and only archiving the project stopped it; now
each claim checks the key by the authenticator's own rules, and the batch is cancelled keeping the
lines that ran, as for an archived project."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from batches.harness import Served, chat_line, jsonl, served
from batches.test_runner import ThreadGate, _wait_running
from modelhost.auth.authenticator import key_in_force
from modelhost.organization import operations
from modelhost.store import batches as store
from modelhost.store.schema import ApiKey
from support.fake_engine import ScriptedEngine


def _revoke(world: Served, key_id: str) -> None:
    operations.revoke_key(world.sessions, key_id)


def _expire(world: Served, key_id: str) -> None:
    with world.sessions.begin() as session:
        key = session.get(ApiKey, key_id)
        assert key is not None
        key.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)


def _delete(world: Served, key_id: str) -> None:
    with world.sessions.begin() as session:
        session.delete(session.get(ApiKey, key_id))


@pytest.mark.parametrize("stop", [_revoke, _expire, _delete], ids=["revoked", "expired", "deleted"])
def test_a_batch_whose_key_stops_working_is_cancelled_keeping_what_ran(tmp_path: Path, stop: Callable[[Served, str], None]) -> None:
    gate = ThreadGate()
    engine = ScriptedEngine(context_length=4096, gate=gate)  # type: ignore[arg-type]
    try:
        with served(tmp_path, engine=engine, fake_files=True, batch_concurrency_per_batch=1) as world:
            assert world.files is not None
            file_id = world.files.add(world.b.principal, jsonl([chat_line(f"r{i}") for i in range(3)]))
            batch = world.client(world.b).batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
            _wait_running(world, batch.id, 1)
            with world.sessions() as session:
                row = store.get(session, batch.id)
                assert row is not None and row.api_key_id
                key_id = row.api_key_id
                assert key_in_force(session, key_id, row.organization_id, row.project_id)
            stop(world, key_id)
            gate.open()
            deadline = time.monotonic() + 20
            while True:
                with world.sessions() as session:
                    row = store.get(session, batch.id)
                    assert row is not None
                    if row.status == "cancelled":
                        break
                assert time.monotonic() < deadline, row.status
                time.sleep(0.05)
            assert (row.request_total, row.request_completed, row.request_failed) == (3, 1, 0)
            assert row.output_file_id is not None
            assert [b'"r0"' in line for line in world.files.read(row.output_file_id).splitlines()] == [True]
            # The other project's key, untouched, still runs its batches.
            mine = world.files.add(world.a.principal, jsonl([chat_line("m0")]))
            other = world.client().batches.create(input_file_id=mine, endpoint="/v1/chat/completions", completion_window="24h")
            assert world.finished(world.client(), other.id).status == "completed"
    finally:
        gate.open()


def test_key_in_force_follows_the_authenticators_rules(tmp_path: Path) -> None:
    with served(tmp_path, fake_files=True, batch_runner_enabled=False) as world:
        key = operations.create_key(world.sessions, project=world.b.project)
        key_id, org = str(key["id"]), world.b.organization

        def check(session: Session) -> Callable[[str], bool]:
            return lambda project: key_in_force(session, key_id, org, project)

        with world.sessions() as session:
            assert check(session)(world.b.project)
            assert not check(session)(world.a.project)  # a project key is in force for its project only
            assert not key_in_force(session, "key_nosuchkey", org, world.b.project)
        operations.archive_project(world.sessions, world.b.project)
        with world.sessions() as session:
            assert not check(session)(world.b.project)
