"""Pending ledger rows: written at admission, settled once, swept only when their replica is dead.

Runs on SQLite and PostgreSQL (the `database` fixture).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from modelhost.store import UsageEntry, UsageLedger
from modelhost.store.ledger import INTERRUPTED, PENDING
from modelhost.store.schema import UsageRecord
from store.databases import Database

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _entry(request_id: str, outcome: str = PENDING, *, prompt: int = 7, completion: int = 0, at: datetime = NOW) -> UsageEntry:
    return UsageEntry(
        request_id=request_id,
        created_at=at,
        organization_id="org-a",
        project_id="proj-a",
        user_id=None,
        api_key_id="key_a",
        model="m",
        operation="chat.completions",
        prompt_tokens=prompt,
        completion_tokens=completion,
        outcome=outcome,
    )


def _rows(database: Database) -> dict[str, tuple[str, int, int, str | None]]:
    with database.sessions() as session:
        return {
            r.request_id: (r.outcome, r.prompt_tokens, r.completion_tokens, r.replica_id)
            for r in session.scalars(select(UsageRecord))
        }


def test_a_pending_row_is_settled_once_and_reports_count_only_settled_rows(database: Database) -> None:
    ledger = UsageLedger(database.sessions)
    assert ledger.admit(_entry("r1"), replica_id="rep-a")
    assert not ledger.admit(_entry("r1"), replica_id="rep-a")  # a request id has one row
    assert ledger.entries() == [] and [e.request_id for e in ledger.entries(include_pending=True)] == ["r1"]
    assert ledger.totals() == []
    start = int(NOW.timestamp()) - 60
    assert ledger.bucketed(organization_id="org-a", operations=None, start=start, end=start + 3600, width=3600) == []

    assert ledger.settle(_entry("r1", "completed", prompt=9, completion=5))
    # A retry of a write that landed (its answer lost) changes nothing.
    assert not ledger.settle(_entry("r1", "cancelled", prompt=1, completion=1))
    assert _rows(database) == {"r1": ("completed", 9, 5, "rep-a")}
    [total] = ledger.totals()
    assert (total.requests, total.prompt_tokens, total.completion_tokens) == (1, 9, 5)
    [bucket] = ledger.bucketed(organization_id="org-a", operations=None, start=start, end=start + 3600, width=3600)
    assert (bucket.requests, bucket.prompt_tokens, bucket.completion_tokens) == (1, 9, 5)


def test_settle_without_a_pending_row_inserts_one(database: Database) -> None:
    ledger = UsageLedger(database.sessions)
    assert ledger.settle(_entry("r2", "completed", completion=3))
    assert not ledger.settle(_entry("r2", "completed", completion=3))
    assert _rows(database) == {"r2": ("completed", 7, 3, None)}


def test_progress_checkpoints_only_pending_rows_and_discard_removes_only_them(database: Database) -> None:
    ledger = UsageLedger(database.sessions)
    ledger.admit(_entry("run"), replica_id="rep-a")
    ledger.admit(_entry("refused"), replica_id="rep-a")
    ledger.record(_entry("done", "completed", completion=4))
    ledger.progress({"run": 12, "done": 99})
    ledger.discard("refused")
    ledger.discard("done")
    assert _rows(database) == {"run": (PENDING, 7, 12, "rep-a"), "done": ("completed", 7, 4, None)}


def test_the_sweep_takes_only_rows_of_dead_replicas_and_settle_still_corrects_them(database: Database) -> None:
    ledger = UsageLedger(database.sessions)
    ledger.heartbeat("live", NOW)
    ledger.heartbeat("dead", NOW - timedelta(seconds=60))
    ledger.heartbeat("me", NOW - timedelta(seconds=60))  # the sweeper's own rows are never "dead"
    ledger.heartbeat("retired", NOW)
    ledger.retire("retired")
    for rid, replica in [("of-live", "live"), ("of-dead", "dead"), ("of-me", "me"), ("of-retired", "retired"), ("of-unknown", "gone")]:
        ledger.admit(_entry(rid), replica_id=replica)
    ledger.admit(_entry("ancient", at=NOW - timedelta(hours=2)), replica_id="live")
    ledger.progress({"of-dead": 5})

    swept = ledger.sweep(replica_id="me", stale_before=NOW - timedelta(seconds=30), admitted_before=NOW - timedelta(hours=1))
    assert sorted(swept) == ["ancient", "of-dead", "of-retired", "of-unknown"]
    rows = _rows(database)
    assert rows["of-live"][0] == rows["of-me"][0] == PENDING
    assert rows["of-dead"] == (INTERRUPTED, 7, 5, "dead")  # the prompt tokens and the last checkpoint
    assert ledger.sweep(replica_id="me", stale_before=NOW - timedelta(seconds=30), admitted_before=NOW - timedelta(hours=1)) == []
    [total] = ledger.totals()
    assert (total.requests, total.prompt_tokens, total.completion_tokens) == (4, 28, 5)

    # The "dead" replica was only cut off: its own settle still lands, on the same row.
    assert ledger.settle(_entry("of-dead", "completed", completion=8))
    assert _rows(database)["of-dead"] == ("completed", 7, 8, "dead")
    assert len(ledger.entries(include_pending=True)) == 6
