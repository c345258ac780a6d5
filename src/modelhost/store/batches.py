"""Batches: their tables (SQLAlchemy models on `schema.Base`) and queries (issue #15).

A batch is one row: what the client asked for, its status and timestamps, its counters, and the
lease of the replica validating or finalizing it. Each line of its input file gets a row in
`batch_lines` when a replica claims it (`running`, leased to that replica) and is completed when it
finishes, in the same transaction as the batch's counters and usage (`finish_line`); once the batch
has ended and its files are written, its line rows are deleted (`forget_lines`). Claims go
through the database only:

- a line is claimed by inserting its row (a second insert of the same line or custom_id is a no-op)
  or by taking over a `running` row whose lease has lapsed (its replica died), a conditional UPDATE
  that exactly one replica wins;
- a batch is claimed for its one-at-a-time steps (validation, finalization) with a conditional
  UPDATE of its lease, after ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite has no
  SKIP LOCKED and one writer at a time; SQLAlchemy leaves the clause out there, same code path).

Every query a client's request reaches takes the caller's organization and project: another
project's batch is the same `NotFound` as one that never existed. Functions take an open `Session`
and commit nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.errors import NotFound
from modelhost.store.pages import Page, keyset_page
from modelhost.store.schema import Base

VALIDATING, IN_PROGRESS, FINALIZING, COMPLETED = "validating", "in_progress", "finalizing", "completed"
FAILED, EXPIRED, CANCELLING, CANCELLED = "failed", "expired", "cancelling", "cancelled"
UNFINISHED = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)  # statuses a runner still has work in
RUNNING, SUCCEEDED, LINE_FAILED, LINE_EXPIRED = "running", "succeeded", "failed", "expired"  # a line's outcome


class BatchRow(Base):
    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_owner", "organization_id", "project_id", "created_at", "id"),
        Index("ix_batches_work", "status", "lease_until"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"))
    user_id: Mapped[str | None] = mapped_column(String(64))
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    key_kind: Mapped[str] = mapped_column(String(32))
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(256))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    output_expires_after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_total: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    request_completed: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    request_failed: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    enqueued_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BatchLine(Base):
    """One line of a batch's input file: claimed (`running`) or finished, with what its endpoint answered."""

    __tablename__ = "batch_lines"
    __table_args__ = (
        UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_custom_id"),
        Index("ix_batch_lines_outcome", "batch_id", "outcome"),
    )

    batch_id: Mapped[str] = mapped_column(String(64), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(512))
    outcome: Mapped[str] = mapped_column(String(16))
    record_id: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128))
    body: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class LineResult:
    """What a finished line adds to its row and to its batch's counters."""

    outcome: str  # SUCCEEDED or LINE_FAILED
    record_id: str
    status_code: int
    request_id: str
    body: str
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


# -- the client's side -------------------------------------------------------------------------


def find_batch(session: Session, organization_id: str, project_id: str, batch_id: str, *, lock: bool = False) -> BatchRow:
    query = select(BatchRow).where(
        BatchRow.id == batch_id, BatchRow.organization_id == organization_id, BatchRow.project_id == project_id
    )
    row = session.scalars(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
    return row


def open_batches(session: Session, organization_id: str, project_id: str) -> int:
    """How many of the project's batches have not ended (validating, in progress, finalizing, cancelling)."""
    query = select(func.count()).where(
        BatchRow.organization_id == organization_id, BatchRow.project_id == project_id, BatchRow.status.in_(UNFINISHED)
    )
    return int(session.scalar(query) or 0)


def page_batches(session: Session, organization_id: str, project_id: str, *, limit: int, after: str | None) -> Page[BatchRow]:
    """The project's batches, newest first (OpenAI's order), `limit` after the batch `after`."""
    query = select(BatchRow).where(BatchRow.organization_id == organization_id, BatchRow.project_id == project_id)
    return keyset_page(session, query, created=BatchRow.created_at, ident=BatchRow.id, limit=limit, after=after, descending=True)


# -- the runner's side -------------------------------------------------------------------------


def get(session: Session, batch_id: str) -> BatchRow | None:
    return session.get(BatchRow, batch_id, populate_existing=True)


def candidates(session: Session, *, limit: int) -> Sequence[BatchRow]:
    """Batches a runner may have work in: each organization's oldest first, then each one's second, …

    Round robin between organizations, not oldest first overall: a page of `limit` filled with one
    organization's batches would hide every other organization's from the runner until they ended.
    """
    rank = (
        func.row_number()
        .over(partition_by=BatchRow.organization_id, order_by=(BatchRow.created_at, BatchRow.id))
        .label("rank")
    )
    ranked = select(BatchRow.id, rank).where(BatchRow.status.in_(UNFINISHED)).subquery()
    query = (
        select(BatchRow)
        .join(ranked, ranked.c.id == BatchRow.id)
        .order_by(ranked.c.rank, BatchRow.created_at, BatchRow.id)
        .limit(limit)
    )
    return session.scalars(query).all()


def claim_batch(session: Session, batch_id: str, owner: str, *, now: datetime, until: datetime, statuses: Sequence[str]) -> bool:
    """Take the batch's lease for `owner` if it is in one of `statuses` and its lease is free, lapsed or `owner`'s."""
    free = or_(BatchRow.lease_until.is_(None), BatchRow.lease_until < now, BatchRow.lease_owner == owner)
    where = and_(BatchRow.id == batch_id, BatchRow.status.in_(statuses), free)
    # A replica holding the row (claiming it too) is skipped, not waited for (PostgreSQL; SQLite has one writer).
    if session.scalars(select(BatchRow.id).where(where).with_for_update(skip_locked=True)).first() is None:
        return False
    claimed = session.execute(update(BatchRow).where(where).values(lease_owner=owner, lease_until=until))
    return int(claimed.rowcount) == 1  # type: ignore[attr-defined]


def release_batch(session: Session, batch_id: str, owner: str) -> None:
    session.execute(
        update(BatchRow).where(BatchRow.id == batch_id, BatchRow.lease_owner == owner).values(lease_owner=None, lease_until=None)
    )


def release_batches(session: Session, owner: str) -> None:
    """Give up every batch lease `owner` holds (it is stopping)."""
    session.execute(update(BatchRow).where(BatchRow.lease_owner == owner).values(lease_owner=None, lease_until=None))


def renew(session: Session, owner: str, batch_ids: Sequence[str], *, until: datetime) -> None:
    """Extend `owner`'s leases: of the batches it holds and of its running lines in `batch_ids`."""
    if not batch_ids:
        return
    session.execute(
        update(BatchRow).where(BatchRow.id.in_(batch_ids), BatchRow.lease_owner == owner).values(lease_until=until)
    )
    session.execute(
        update(BatchLine)
        .where(BatchLine.batch_id.in_(batch_ids), BatchLine.outcome == RUNNING, BatchLine.lease_owner == owner)
        .values(lease_until=until)
    )


def release_lines(session: Session, owner: str, *, now: datetime) -> None:
    """Let other replicas take over `owner`'s running lines at once (it is stopping)."""
    session.execute(
        update(BatchLine).where(BatchLine.outcome == RUNNING, BatchLine.lease_owner == owner).values(lease_until=now)
    )


def claim_line(
    session: Session, batch_id: str, line: int, custom_id: str, owner: str, *, now: datetime, until: datetime
) -> bool:
    """Claim one line for `owner`: its row inserted `running`, or a lapsed `running` row taken over."""
    values = {
        "batch_id": batch_id, "line": line, "custom_id": custom_id, "outcome": RUNNING,
        "lease_owner": owner, "lease_until": until, "input_tokens": 0, "output_tokens": 0,
    }
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(BatchLine)
    inserted = session.execute(insert.values(**values).on_conflict_do_nothing())
    if int(inserted.rowcount) == 1:  # type: ignore[attr-defined]
        return True
    taken = session.execute(
        update(BatchLine)
        .where(
            BatchLine.batch_id == batch_id,
            BatchLine.line == line,
            BatchLine.outcome == RUNNING,
            or_(BatchLine.lease_until < now, BatchLine.lease_owner == owner),
        )
        .values(lease_owner=owner, lease_until=until)
    )
    return int(taken.rowcount) == 1  # type: ignore[attr-defined]


def finish_line(session: Session, batch_id: str, line: int, owner: str, result: LineResult, *, now: datetime) -> bool:
    """Record `result` on the line `owner` runs and count it on the batch; False (nothing written) if `owner` lost it."""
    written = session.execute(
        update(BatchLine)
        .where(BatchLine.batch_id == batch_id, BatchLine.line == line, BatchLine.outcome == RUNNING, BatchLine.lease_owner == owner)
        .values(
            outcome=result.outcome, record_id=result.record_id, status_code=result.status_code,
            request_id=result.request_id, body=result.body, input_tokens=result.input_tokens,
            output_tokens=result.output_tokens, lease_owner=None, lease_until=None, finished_at=now,
        )
    )
    if int(written.rowcount) != 1:  # type: ignore[attr-defined]
        return False
    succeeded = result.outcome == SUCCEEDED
    session.execute(
        update(BatchRow)
        .where(BatchRow.id == batch_id)
        .values(
            request_completed=BatchRow.request_completed + (1 if succeeded else 0),
            request_failed=BatchRow.request_failed + (0 if succeeded else 1),
            input_tokens=BatchRow.input_tokens + result.input_tokens,
            cached_tokens=BatchRow.cached_tokens + result.cached_tokens,
            output_tokens=BatchRow.output_tokens + result.output_tokens,
        )
    )
    return True


def expire_line(session: Session, batch_id: str, line: int, custom_id: str, record_id: str, error: dict[str, Any], *, now: datetime) -> None:
    """The line did not run before the batch expired: its row says so (an unfinished `running` row becomes it)."""
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(BatchLine)
    values = {
        "batch_id": batch_id, "line": line, "custom_id": custom_id, "outcome": LINE_EXPIRED, "record_id": record_id,
        "error": error, "finished_at": now, "input_tokens": 0, "output_tokens": 0,
    }
    if session.execute(insert.values(**values).on_conflict_do_nothing()).rowcount == 1:  # type: ignore[attr-defined]
        return
    session.execute(
        update(BatchLine)
        .where(BatchLine.batch_id == batch_id, BatchLine.line == line, BatchLine.outcome == RUNNING)
        .values(outcome=LINE_EXPIRED, record_id=record_id, error=error, finished_at=now, lease_owner=None, lease_until=None)
    )


def finished_lines(session: Session, batch_id: str) -> set[int]:
    """The numbers of the lines that have an outcome (run or expired): never run again."""
    query = select(BatchLine.line).where(BatchLine.batch_id == batch_id, BatchLine.outcome != RUNNING)
    return set(session.scalars(query))


def running_lines(session: Session, batch_id: str, *, now: datetime) -> int:
    """Lines some live replica is running (lease not lapsed)."""
    query = select(func.count()).where(
        BatchLine.batch_id == batch_id, BatchLine.outcome == RUNNING, BatchLine.lease_until >= now
    )
    return int(session.scalar(query) or 0)


def rows_after(session: Session, batch_id: str, outcomes: Sequence[str], *, after: int, limit: int) -> Sequence[BatchLine]:
    """Finished rows with one of `outcomes`, in line order, after line `after` (the files are written page by page)."""
    query = (
        select(BatchLine)
        .where(BatchLine.batch_id == batch_id, BatchLine.outcome.in_(outcomes), BatchLine.line > after)
        .order_by(BatchLine.line)
        .limit(limit)
    )
    return session.scalars(query).all()


def forget_lines(session: Session, batch_id: str) -> None:
    """Delete the line rows of a batch that has ended (its output and error files hold them)."""
    session.execute(delete(BatchLine).where(BatchLine.batch_id == batch_id))


def transition(session: Session, batch_id: str, *, from_: Sequence[str], **values: Any) -> bool:
    """Set `values` (a new status and its timestamp) if the batch is still in one of `from_`."""
    done = session.execute(update(BatchRow).where(BatchRow.id == batch_id, BatchRow.status.in_(from_)).values(**values))
    return int(done.rowcount) == 1  # type: ignore[attr-defined]
