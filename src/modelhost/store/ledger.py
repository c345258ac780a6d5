"""The usage ledger: one row per generation, written once, summed for reports.

A generation's row is written twice, never duplicated (its `request_id` is unique):

1. `admit`, when its limits are reserved and before any engine work: outcome ``pending``, the
   prompt tokens it was admitted with, the replica (process) that admitted it;
2. `settle`, when it ends: its final usage and outcome (completed, cancelled, failed).

A replica that dies in between leaves its rows ``pending``; a live replica's `sweep` marks them
``interrupted`` once the dead one's heartbeat (`heartbeat`, table ``ledger_replicas``) is stale,
keeping the prompt tokens and the completion tokens last checkpointed by `progress`. `settle` still
overwrites an interrupted row (a replica cut off from the database, presumed dead, that lived), and
never a settled one, so retries are harmless. Reports (`totals`, `bucketed`, `entries`) leave out
pending rows: their numbers are not final.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Integer, and_, bindparam, cast, delete, func, or_, select, update
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from modelhost.store.schema import LedgerReplica, UsageRecord

PENDING = "pending"  # admitted, not settled yet
INTERRUPTED = "interrupted"  # admitted by a replica that died before settling it


@dataclass(frozen=True)
class UsageEntry:
    """What one generation cost and on whose account."""

    request_id: str
    created_at: datetime
    organization_id: str
    project_id: str
    user_id: str | None
    api_key_id: str | None
    model: str
    operation: str
    prompt_tokens: int
    completion_tokens: int
    outcome: str
    batch: bool = False  # a line of a batch (`Principal.is_batch`), priced at the batch multiplier


@dataclass(frozen=True)
class UsageTotal:
    organization_id: str
    project_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Spend:
    """Settled tokens of one project on one model, batch work apart: what a quota's period has used."""

    project_id: str
    model: str
    batch: bool
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class UsageGroup:
    """Sums of one time bucket and one combination of the grouped columns."""

    bucket: int  # index of the bucket: it starts at start + bucket * width
    key: tuple[str | bool | None, ...]  # values of the grouped columns, in the order asked for
    requests: int
    prompt_tokens: int
    completion_tokens: int


#: The ledger columns a bucketed query may group by.
GROUPABLE = ("project_id", "user_id", "api_key_id", "model", "operation", "batch")


def _epoch_seconds(column: InstrumentedAttribute[datetime], dialect: str) -> ColumnElement[int]:
    """Whole Unix seconds of a timestamp column, in the database's own dialect."""
    if dialect == "sqlite":  # timestamps are stored as UTC text
        return cast(func.strftime("%s", column), Integer)
    return cast(func.floor(func.extract("epoch", column)), BigInteger)


class UsageLedger:
    """Writes and sums usage rows. A request id is recorded at most once."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record(self, entry: UsageEntry, *, replica_id: str | None = None) -> bool:
        """Insert the row; returns False if this request id was already recorded."""
        with self._sessions() as session:
            session.add(UsageRecord(**entry.__dict__, replica_id=replica_id))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
        return True

    def admit(self, entry: UsageEntry, *, replica_id: str) -> bool:
        """Insert the ``pending`` row of a request about to run; False if its id was already recorded."""
        assert entry.outcome == PENDING, "admit writes pending rows; settle writes final ones"
        return self.record(entry, replica_id=replica_id)

    def settle(self, entry: UsageEntry) -> bool:
        """Write a request's final usage onto its row; False if it was already settled (a retry).

        Idempotent, so a write whose commit landed but whose answer was lost can be repeated. A
        request with no row at all (admitted by an older version) gets one inserted.
        """
        assert entry.outcome not in (PENDING, INTERRUPTED), "settle writes final outcomes"
        final = (
            update(UsageRecord)
            .where(UsageRecord.request_id == entry.request_id, UsageRecord.outcome.in_((PENDING, INTERRUPTED)))
            .values(
                created_at=entry.created_at,
                prompt_tokens=entry.prompt_tokens,
                completion_tokens=entry.completion_tokens,
                outcome=entry.outcome,
            )
            .execution_options(synchronize_session=False)  # nothing is loaded in this session
        )
        with self._sessions() as session:
            written = _rows_updated(session.execute(final))
            session.commit()
        return bool(written) or self.record(entry)

    def discard(self, request_id: str) -> None:
        """Delete a pending row whose request never ran (the engine refused it)."""
        with self._sessions() as session:
            session.execute(
                delete(UsageRecord).where(UsageRecord.request_id == request_id, UsageRecord.outcome == PENDING)
            )
            session.commit()

    def progress(self, completion_tokens: Mapping[str, int]) -> None:
        """Checkpoint the completion tokens of pending rows (request id → tokens so far)."""
        if not completion_tokens:
            return
        statement = (
            update(UsageRecord)
            .where(UsageRecord.request_id == bindparam("rid"), UsageRecord.outcome == PENDING)
            .values(completion_tokens=bindparam("tokens"))
        )
        with self._sessions() as session:
            session.connection().execute(statement, [{"rid": r, "tokens": t} for r, t in completion_tokens.items()])
            session.commit()

    def heartbeat(self, replica_id: str, now: datetime) -> None:
        """Say that `replica_id` is alive at `now` (its pending rows are its own to settle)."""
        with self._sessions() as session:
            beat = update(LedgerReplica).where(LedgerReplica.replica_id == replica_id).values(heartbeat_at=now)
            if not _rows_updated(session.execute(beat)):
                session.add(LedgerReplica(replica_id=replica_id, started_at=now, heartbeat_at=now))
            session.commit()

    def retire(self, replica_id: str) -> None:
        """`replica_id` is stopping: whatever it leaves pending may be swept at once."""
        with self._sessions() as session:
            session.execute(delete(LedgerReplica).where(LedgerReplica.replica_id == replica_id))
            session.commit()

    def sweep(self, *, replica_id: str, stale_before: datetime, admitted_before: datetime) -> list[str]:
        """Mark ``interrupted`` the pending rows no live replica will settle; returns their request ids.

        Those are rows of replicas other than `replica_id` with no heartbeat since `stale_before`
        (or none at all), and rows admitted before `admitted_before` whoever holds them (longer than
        any request may run: a replica that lost track of them).
        """
        live = select(LedgerReplica.replica_id).where(LedgerReplica.heartbeat_at >= stale_before)
        orphaned = (
            UsageRecord.outcome == PENDING,
            or_(
                UsageRecord.created_at < admitted_before,
                UsageRecord.replica_id.is_(None),
                and_(UsageRecord.replica_id != replica_id, UsageRecord.replica_id.not_in(live)),
            ),
        )
        with self._sessions() as session:
            ids = list(session.scalars(select(UsageRecord.request_id).where(*orphaned)))
            if ids:
                session.execute(
                    update(UsageRecord)
                    .where(UsageRecord.request_id.in_(ids), UsageRecord.outcome == PENDING)
                    .values(outcome=INTERRUPTED)
                )
                session.commit()
            return ids

    def entries(self, *, organization_id: str | None = None, include_pending: bool = False) -> list[UsageEntry]:
        """Rows in the order they were admitted; pending ones only if asked for."""
        with self._sessions() as session:
            query = select(UsageRecord).order_by(UsageRecord.id)
            if organization_id is not None:
                query = query.where(UsageRecord.organization_id == organization_id)
            if not include_pending:
                query = query.where(UsageRecord.outcome != PENDING)
            return [_entry(row) for row in session.scalars(query)]

    def totals(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        organization_id: str | None = None,
    ) -> list[UsageTotal]:
        """Sums by organization, project and model over ``since <= created_at < until`` (settled rows)."""
        query = select(
            UsageRecord.organization_id,
            UsageRecord.project_id,
            UsageRecord.model,
            func.count(UsageRecord.id),
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
        ).group_by(UsageRecord.organization_id, UsageRecord.project_id, UsageRecord.model)
        query = query.where(UsageRecord.outcome != PENDING)
        if since is not None:
            query = query.where(UsageRecord.created_at >= since)
        if until is not None:
            query = query.where(UsageRecord.created_at < until)
        if organization_id is not None:
            query = query.where(UsageRecord.organization_id == organization_id)
        query = query.order_by(UsageRecord.organization_id, UsageRecord.project_id, UsageRecord.model)
        with self._sessions() as session:
            return [UsageTotal(o, p, m, int(c), int(pt), int(ct)) for o, p, m, c, pt, ct in session.execute(query)]

    def spent(self, *, since: datetime, until: datetime, organization_id: str) -> list[Spend]:
        """The organization's settled tokens over ``since <= created_at < until`` by project, model and
        batch flag: batch work is priced apart (its multiplier), so a quota's start sums it apart."""
        columns = (UsageRecord.project_id, UsageRecord.model, UsageRecord.batch)
        query = (
            select(
                *columns,
                func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
                func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
            )
            .where(
                UsageRecord.organization_id == organization_id,
                UsageRecord.created_at >= since,
                UsageRecord.created_at < until,
                UsageRecord.outcome != PENDING,
            )
            .group_by(*columns)
        )
        with self._sessions() as session:
            return [Spend(p, m, bool(b), int(pt), int(ct)) for p, m, b, pt, ct in session.execute(query)]

    def bucketed(
        self,
        *,
        organization_id: str,
        operations: Sequence[str] | None,
        start: int,
        end: int,
        width: int,
        group_by: Sequence[str] = (),
        project_ids: Sequence[str] = (),
        user_ids: Sequence[str] = (),
        api_key_ids: Sequence[str] = (),
        models: Sequence[str] = (),
        batch: bool | None = None,
    ) -> list[UsageGroup]:
        """Sums per `width`-second bucket counted from `start`, over ``start <= created_at < end``.

        Only the organization's rows of the given `operations` (None: all), narrowed by the id lists
        (empty: any) and `batch` (None: batch work and the rest), grouped by the `group_by` columns
        (a subset of `GROUPABLE`).
        """
        assert width > 0 and end >= start, "the caller validates the range"
        assert set(group_by) <= set(GROUPABLE), f"group_by is a subset of {GROUPABLE}"
        query = select(UsageRecord).where(
            UsageRecord.organization_id == organization_id,
            UsageRecord.created_at >= datetime.fromtimestamp(start, timezone.utc),
            UsageRecord.created_at < datetime.fromtimestamp(end, timezone.utc),
            UsageRecord.outcome != PENDING,
        )
        if operations is not None:
            query = query.where(UsageRecord.operation.in_(operations))
        if batch is not None:
            query = query.where(UsageRecord.batch == batch)
        for column, wanted in (
            (UsageRecord.project_id, project_ids),
            (UsageRecord.user_id, user_ids),
            (UsageRecord.api_key_id, api_key_ids),
            (UsageRecord.model, models),
        ):
            if wanted:
                query = query.where(column.in_(wanted))
        with self._sessions() as session:
            dialect = session.get_bind().dialect.name
            seconds = _epoch_seconds(UsageRecord.created_at, dialect)
            rows = query.with_only_columns(
                ((seconds - start) // width).label("bucket"),
                *(getattr(UsageRecord, name).label(name) for name in group_by),
                UsageRecord.prompt_tokens,
                UsageRecord.completion_tokens,
            ).subquery()
            # Grouping an outer query by the inner column keeps PostgreSQL from seeing two different
            # bound-parameter expressions in SELECT and GROUP BY.
            keys = [rows.c.bucket, *(rows.c[name] for name in group_by)]
            summed = select(
                *keys,
                func.count(),
                func.coalesce(func.sum(rows.c.prompt_tokens), 0),
                func.coalesce(func.sum(rows.c.completion_tokens), 0),
            ).group_by(*keys)
            return [
                UsageGroup(int(row[0]), _group_key(group_by, row[1 : 1 + len(group_by)]), int(row[-3]), int(row[-2]), int(row[-1]))
                for row in session.execute(summed)
            ]


def _entry(row: UsageRecord) -> UsageEntry:
    return UsageEntry(
        request_id=row.request_id,
        created_at=row.created_at,
        organization_id=row.organization_id,
        project_id=row.project_id,
        user_id=row.user_id,
        api_key_id=row.api_key_id,
        model=row.model,
        operation=row.operation,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        outcome=row.outcome,
        batch=row.batch,
    )


def _group_key(group_by: Sequence[str], values: Sequence[Any]) -> tuple[str | bool | None, ...]:
    """The grouped values as their columns' types: SQLite hands a boolean back as 0 or 1."""
    return tuple(bool(v) if name == "batch" else v for name, v in zip(group_by, values))


def _rows_updated(result: Result[Any]) -> int:
    """How many rows an UPDATE matched (`Session.execute` is typed as any `Result`; an UPDATE's is a `CursorResult`)."""
    assert isinstance(result, CursorResult), "only UPDATE and DELETE results count rows"
    return result.rowcount
