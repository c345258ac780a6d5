"""R15: the enqueued-token limit holds across replicas. Two replicas validating batches of one
organization at the same moment each summed the unfinished batches' enqueued tokens (neither saw
the other's yet) and both passed. The sum and the transition that stores the batch's tokens are now
one transaction that first locks the organization's row (FOR UPDATE on PostgreSQL; SQLite's write
lock), so the second sums after the first has committed.

Two runners (replicas) end validation of one batch each on threads with sessions of their own; the
sum is slowed down so that, without the lock, both would read 0."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from store.databases import Database

from modelhost.auth import Principal
from modelhost.batches.lines import LineChecks
from modelhost.batches.runner import BatchRunner
from modelhost.limits.limiter import EnqueueLimits
from modelhost.organization import bootstrap
from modelhost.store import batches as store
from modelhost.store import limits as stored_limits

MODEL = "scripted"




def _batch(database: Database, who: Principal, batch_id: str) -> None:
    now = datetime.now(timezone.utc)
    with database.sessions.begin() as session:
        session.add(
            store.BatchRow(
                id=batch_id, organization_id=who.organization_id, project_id=who.project_id, user_id=None, api_key_id=None,
                key_kind="project", endpoint="/v1/chat/completions", model=None, input_file_id="file-x", completion_window="24h",
                status=store.VALIDATING, created_at=now, expires_at=now + timedelta(hours=24), request_total=0,
                request_completed=0, request_failed=0, input_tokens=0, cached_tokens=0, output_tokens=0, enqueued_tokens=0,
            )
        )


def _runner(database: Database, replica: str) -> BatchRunner:
    return BatchRunner(app=None, sessions=database.sessions, files=None, registry=lambda: None, replica_id=replica)  # type: ignore[arg-type]


def test_two_replicas_validating_at_once_do_not_pass_the_limit_together(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    first = bootstrap.bootstrap(database.sessions)
    who = Principal(first.organization_id, first.project_id, "", "", "project")
    summed = stored_limits.enqueued_batch_tokens

    def slow_sum(*args: Any, **kwargs: Any) -> tuple[int, int]:
        found = summed(*args, **kwargs)
        time.sleep(0.5)  # the other replica sums meanwhile (unless it waits for the lock)
        return found

    monkeypatch.setattr(stored_limits, "enqueued_batch_tokens", slow_sum)
    ids = ["batch_replica_1", "batch_replica_2"]
    for batch_id in ids:
        _batch(database, who, batch_id)
    limits = EnqueueLimits(organization=30, project=0)
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def validate(replica: str, batch_id: str) -> None:
        try:
            checks = LineChecks("/v1/chat/completions", max_lines=10)
            checks.total = 2
            start.wait(5)
            with database.sessions.begin() as session:
                _runner(database, replica)._end_validation(session, batch_id, who, checks, MODEL, 20, limits)
        except BaseException as exc:  # noqa: BLE001  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=validate, args=(f"replica-{i}", batch_id)) for i, batch_id in enumerate(ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    with database.sessions() as session:
        rows = [store.get(session, batch_id) for batch_id in ids]
        statuses = sorted(row.status for row in rows if row is not None)
        assert statuses == [store.FAILED, store.IN_PROGRESS], statuses  # 20 + 20 > 30: one of the two
        failed = next(row for row in rows if row is not None and row.status == store.FAILED)
        assert failed.errors is not None and failed.errors["data"][0]["code"] == "token_limit_exceeded"
        passed = next(row for row in rows if row is not None and row.status == store.IN_PROGRESS)
        assert passed.enqueued_tokens == 20 and passed.model == MODEL
