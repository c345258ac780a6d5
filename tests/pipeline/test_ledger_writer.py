"""`LedgerWriter`: a database that fails N times, or for longer than a request waits, loses no usage.

Runs on SQLite and PostgreSQL (the `database` fixture); the failures are injected in front of the
real ledger, so what lands is checked in the real tables.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from modelhost.pipeline.ledger_writer import LedgerUnavailable, LedgerWriter
from modelhost.store import UsageEntry, UsageLedger
from modelhost.store.ledger import INTERRUPTED, PENDING
from modelhost.store.schema import UsageRecord
from store.databases import Database


class FlakyLedger(UsageLedger):
    """The real ledger, except that the next `failures` writes of the named kinds raise (or land, then raise)."""

    def __init__(self, sessions, *, kinds: tuple[str, ...] = ("settle",), lose_answer: bool = False) -> None:  # type: ignore[no-untyped-def]
        super().__init__(sessions)
        self.failures = 0
        self.calls = 0
        self._kinds = kinds
        self._lose_answer = lose_answer

    def _maybe_fail(self, kind: str, write):  # type: ignore[no-untyped-def]
        if kind in self._kinds:
            self.calls += 1
            if self.failures > 0:
                self.failures -= 1
                if self._lose_answer:
                    write()  # the commit lands; the answer never arrives
                raise OperationalError("UPDATE usage_records", {}, Exception("connection reset (injected)"))
        return write()

    def settle(self, entry: UsageEntry) -> bool:
        return self._maybe_fail("settle", lambda: super(FlakyLedger, self).settle(entry))  # type: ignore[no-any-return]

    def admit(self, entry: UsageEntry, *, replica_id: str) -> bool:
        return self._maybe_fail("admit", lambda: super(FlakyLedger, self).admit(entry, replica_id=replica_id))  # type: ignore[no-any-return]


def _entry(request_id: str, outcome: str, *, completion: int = 0) -> UsageEntry:
    return UsageEntry(
        request_id=request_id,
        created_at=datetime.now(timezone.utc),
        organization_id="org-a",
        project_id="proj-a",
        user_id=None,
        api_key_id="key_a",
        model="m",
        operation="chat.completions",
        prompt_tokens=11,
        completion_tokens=completion,
        outcome=outcome,
    )


def _rows(database: Database) -> list[tuple[str, str, int, int]]:
    with database.sessions() as session:
        return [(r.request_id, r.outcome, r.prompt_tokens, r.completion_tokens) for r in session.scalars(select(UsageRecord))]


def test_settle_retries_a_store_that_fails_n_times_and_returns_once_the_row_is_durable(database: Database) -> None:
    ledger = FlakyLedger(database.sessions)
    writer = LedgerWriter(ledger, settle_wait=10)

    async def main() -> tuple[bool, float]:
        await writer.admit(_entry("r1", PENDING))
        ledger.failures = 4
        started = time.monotonic()
        durable = await writer.settle(_entry("r1", "completed", completion=5))
        return durable, time.monotonic() - started

    durable, took = asyncio.run(main())
    assert durable and ledger.calls == 5 and writer.backlog == 0
    assert took >= 0.05 + 0.1 + 0.2 + 0.4  # backed off between the attempts
    assert _rows(database) == [("r1", "completed", 11, 5)]


def test_a_write_whose_answer_was_lost_is_retried_without_a_second_row(database: Database) -> None:
    ledger = FlakyLedger(database.sessions, lose_answer=True)
    writer = LedgerWriter(ledger, settle_wait=10)

    async def main() -> bool:
        await writer.admit(_entry("r1", PENDING))
        ledger.failures = 2
        return await writer.settle(_entry("r1", "completed", completion=5))

    assert asyncio.run(main())
    assert _rows(database) == [("r1", "completed", 11, 5)]


def test_a_store_down_past_the_wait_keeps_the_row_and_the_background_writes_it(database: Database) -> None:
    ledger = FlakyLedger(database.sessions)
    writer = LedgerWriter(ledger, settle_wait=0.3, heartbeat=60)

    async def main() -> None:
        await writer.admit(_entry("r1", PENDING))
        ledger.failures = 10**6
        assert not await writer.settle(_entry("r1", "completed", completion=5))
        assert writer.backlog == 1
        await writer.tick()  # still down: kept
        assert writer.backlog == 1 and _rows(database) == [("r1", PENDING, 11, 0)]
        ledger.failures = 0
        await writer.tick()

    asyncio.run(main())
    assert writer.backlog == 0
    assert _rows(database) == [("r1", "completed", 11, 5)]


def test_writes_still_waiting_at_shutdown_are_spooled_and_written_by_the_next_start(database: Database, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ledger = FlakyLedger(database.sessions)
    first = LedgerWriter(ledger, settle_wait=0.2, heartbeat=60, spool_dir=spool)

    async def crashed_database() -> None:
        await first.start()
        await first.admit(_entry("r1", PENDING))
        ledger.failures = 10**6
        assert not await first.settle(_entry("r1", "completed", completion=5))
        await first.close()

    asyncio.run(crashed_database())
    assert [p.name for p in spool.iterdir()] == [f"{first.replica_id}.jsonl"]
    assert _rows(database) == [("r1", PENDING, 11, 0)]

    second = LedgerWriter(UsageLedger(database.sessions), heartbeat=60, spool_dir=spool)

    async def restart() -> None:
        await second.start()
        await second.close()

    asyncio.run(restart())
    assert _rows(database) == [("r1", "completed", 11, 5)]
    assert list(spool.iterdir()) == []


def test_admission_fails_closed_and_an_abandoned_pending_row_is_taken_back(database: Database) -> None:
    ledger = FlakyLedger(database.sessions, kinds=("admit",), lose_answer=True)
    writer = LedgerWriter(ledger, heartbeat=60)
    ledger.failures = 10**6

    async def main() -> None:
        with pytest.raises(LedgerUnavailable):
            await writer.admit(_entry("r1", PENDING))
        assert [r[1] for r in _rows(database)] == [PENDING]  # an attempt landed after all
        ledger.failures = 0
        await writer.tick()

    asyncio.run(main())
    assert _rows(database) == []  # the request never ran: no row


def test_a_live_replica_keeps_its_pending_rows_and_a_dead_ones_are_swept_with_their_checkpoint(database: Database) -> None:
    alive = LedgerWriter(UsageLedger(database.sessions), heartbeat=0.2)
    dying = LedgerWriter(UsageLedger(database.sessions), heartbeat=0.2)
    sweeper = LedgerWriter(UsageLedger(database.sessions), heartbeat=0.2)

    async def main() -> None:
        for writer, rid in ((alive, "of-alive"), (dying, "of-dying")):
            await writer.tick()
            await writer.admit(_entry(rid, PENDING))
        dying.track("of-dying", lambda: 6)
        alive.track("of-alive", lambda: 3)
        for _ in range(6):  # 1.2 s: 6 heartbeats of the live one, 2 of the dying one
            await alive.tick()
            if _ < 2:
                await dying.tick()
            await sweeper.tick()
            await asyncio.sleep(0.2)

    asyncio.run(main())
    assert sorted(_rows(database)) == [("of-alive", PENDING, 11, 3), ("of-dying", INTERRUPTED, 11, 6)]
