"""How replicas share a batch through the store, on SQLite and PostgreSQL: one claim per line, a lapsed
lease taken over, a late finish of a line lost to another replica written nowhere, and a batch held by
one replica skipped (not waited for) by another on PostgreSQL."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from store.databases import Database

from modelhost.store import batches as store
from modelhost.store import tenancy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)




def _batch(database: Database) -> str:
    with database.sessions.begin() as session:
        org = tenancy.create_organization(session, "Batches")
        session.flush()
        project = tenancy.default_project(session, org.id)
        assert project is not None
        row = store.BatchRow(
            id="batch_1", organization_id=org.id, project_id=project.id, key_kind="project", endpoint="/v1/chat/completions",
            input_file_id="file-1", completion_window="24h", status=store.IN_PROGRESS, created_at=NOW, expires_at=NOW + timedelta(hours=24),
            request_total=2, request_completed=0, request_failed=0, input_tokens=0, cached_tokens=0, output_tokens=0, enqueued_tokens=0,
        )
        session.add(row)
    return "batch_1"


def _result(outcome: str = store.SUCCEEDED) -> store.LineResult:
    return store.LineResult(outcome, "batch_req_x", 200, "req_x", "{}", input_tokens=5, cached_tokens=1, output_tokens=2)


def test_a_line_is_claimed_once_taken_over_after_its_lease_and_counted_once(database: Database) -> None:
    batch = _batch(database)
    with database.sessions.begin() as session:
        assert store.claim_line(session, batch, 1, "a", "r1", now=NOW, until=NOW + LEASE)
        assert not store.claim_line(session, batch, 1, "a", "r2", now=NOW, until=NOW + LEASE)  # r1 holds it
        assert not store.claim_line(session, batch, 2, "a", "r2", now=NOW, until=NOW + LEASE)  # custom_id taken
    later = NOW + LEASE + timedelta(seconds=1)
    with database.sessions.begin() as session:
        assert store.running_lines(session, batch, now=NOW) == 1 and store.running_lines(session, batch, now=later) == 0
        assert store.claim_line(session, batch, 1, "a", "r2", now=later, until=later + LEASE)  # r1's lease lapsed
    with database.sessions.begin() as session:
        assert not store.finish_line(session, batch, 1, "r1", _result(), now=later)  # r1 woke up late: nothing written
        assert store.finish_line(session, batch, 1, "r2", _result(), now=later)
        assert not store.finish_line(session, batch, 1, "r2", _result(), now=later)  # once
        assert not store.claim_line(session, batch, 1, "a", "r3", now=later + 2 * LEASE, until=later + 3 * LEASE)  # finished for good
    with database.sessions() as session:
        row = store.get(session, batch)
        assert row is not None and (row.request_completed, row.request_failed, row.input_tokens, row.cached_tokens, row.output_tokens) == (1, 0, 5, 1, 2)
        assert store.finished_lines(session, batch) == {1}


def test_expiring_keeps_finished_lines_and_marks_the_rest(database: Database) -> None:
    batch = _batch(database)
    error = {"code": "batch_expired", "message": "m"}
    with database.sessions.begin() as session:
        store.claim_line(session, batch, 1, "a", "r1", now=NOW, until=NOW + LEASE)
        store.finish_line(session, batch, 1, "r1", _result(store.LINE_FAILED), now=NOW)
        store.claim_line(session, batch, 2, "b", "dead", now=NOW, until=NOW)  # its replica died
        store.expire_line(session, batch, 1, "a", "batch_req_e1", error, now=NOW)
        store.expire_line(session, batch, 2, "b", "batch_req_e2", error, now=NOW)
        store.expire_line(session, batch, 3, "c", "batch_req_e3", error, now=NOW)
    with database.sessions() as session:
        rows = store.rows_after(session, batch, (store.LINE_FAILED, store.LINE_EXPIRED), after=0, limit=10)
        assert [(r.line, r.outcome) for r in rows] == [(1, "failed"), (2, "expired"), (3, "expired")]
        assert [r.line for r in store.rows_after(session, batch, (store.LINE_EXPIRED,), after=2, limit=10)] == [3]


def test_a_batch_lease_is_held_by_one_replica_until_it_lapses(database: Database) -> None:
    batch = _batch(database)
    statuses = (store.IN_PROGRESS,)
    with database.sessions.begin() as session:
        assert store.claim_batch(session, batch, "r1", now=NOW, until=NOW + LEASE, statuses=statuses)
        assert store.claim_batch(session, batch, "r1", now=NOW, until=NOW + LEASE, statuses=statuses)  # its own: renewed
        assert not store.claim_batch(session, batch, "r2", now=NOW, until=NOW + LEASE, statuses=statuses)
        assert not store.claim_batch(session, batch, "r2", now=NOW, until=NOW + LEASE, statuses=(store.VALIDATING,))
        assert store.claim_batch(session, batch, "r2", now=NOW + 2 * LEASE, until=NOW + 3 * LEASE, statuses=statuses)
        store.release_batch(session, batch, "r1")  # not r1's any more: nothing happens
        row = store.get(session, batch)
        assert row is not None and row.lease_owner == "r2"


def test_postgresql_skips_a_batch_another_replica_is_claiming_instead_of_waiting(database: Database) -> None:
    if database.kind != "postgresql":
        pytest.skip("SQLite has one writer at a time and no row locks")
    batch = _batch(database)
    holder = database.sessions()
    try:
        holder.begin()
        assert store.claim_batch(holder, batch, "r1", now=NOW, until=NOW + LEASE, statuses=(store.IN_PROGRESS,))  # row locked, not committed
        started = time.monotonic()
        with database.sessions.begin() as session:
            assert not store.claim_batch(session, batch, "r2", now=NOW, until=NOW + LEASE, statuses=(store.IN_PROGRESS,))
        assert time.monotonic() - started < 2
    finally:
        holder.rollback()
        holder.close()
