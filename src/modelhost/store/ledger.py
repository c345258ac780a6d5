"""The usage ledger: one row per generation, written once, summed for reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from modelhost.store.schema import UsageRecord


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


@dataclass(frozen=True)
class UsageTotal:
    organization_id: str
    project_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class UsageGroup:
    """Sums of one time bucket and one combination of the grouped columns."""

    bucket: int  # index of the bucket: it starts at start + bucket * width
    key: tuple[str | None, ...]  # values of the grouped columns, in the order asked for
    requests: int
    prompt_tokens: int
    completion_tokens: int


#: The ledger columns a bucketed query may group by.
GROUPABLE = ("project_id", "user_id", "api_key_id", "model", "operation")


def _epoch_seconds(column: InstrumentedAttribute[datetime], dialect: str) -> ColumnElement[int]:
    """Whole Unix seconds of a timestamp column, in the database's own dialect."""
    if dialect == "sqlite":  # timestamps are stored as UTC text
        return cast(func.strftime("%s", column), Integer)
    return cast(func.floor(func.extract("epoch", column)), BigInteger)


class UsageLedger:
    """Writes and sums usage rows. A request id is recorded at most once."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record(self, entry: UsageEntry) -> bool:
        """Insert the row; returns False if this request id was already recorded."""
        with self._sessions() as session:
            session.add(UsageRecord(**entry.__dict__))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
        return True

    def entries(self, *, organization_id: str | None = None) -> list[UsageEntry]:
        with self._sessions() as session:
            query = select(UsageRecord).order_by(UsageRecord.id)
            if organization_id is not None:
                query = query.where(UsageRecord.organization_id == organization_id)
            return [_entry(row) for row in session.scalars(query)]

    def totals(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        organization_id: str | None = None,
    ) -> list[UsageTotal]:
        """Sums by organization, project and model over ``since <= created_at < until``."""
        query = select(
            UsageRecord.organization_id,
            UsageRecord.project_id,
            UsageRecord.model,
            func.count(UsageRecord.id),
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
        ).group_by(UsageRecord.organization_id, UsageRecord.project_id, UsageRecord.model)
        if since is not None:
            query = query.where(UsageRecord.created_at >= since)
        if until is not None:
            query = query.where(UsageRecord.created_at < until)
        if organization_id is not None:
            query = query.where(UsageRecord.organization_id == organization_id)
        query = query.order_by(UsageRecord.organization_id, UsageRecord.project_id, UsageRecord.model)
        with self._sessions() as session:
            return [UsageTotal(o, p, m, int(c), int(pt), int(ct)) for o, p, m, c, pt, ct in session.execute(query)]


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
    ) -> list[UsageGroup]:
        """Sums per `width`-second bucket counted from `start`, over ``start <= created_at < end``.

        Only the organization's rows of the given `operations` (None: all), narrowed by the id lists
        (empty: any), grouped by the `group_by` columns (a subset of `GROUPABLE`).
        """
        assert width > 0 and end >= start, "the caller validates the range"
        assert set(group_by) <= set(GROUPABLE), f"group_by is a subset of {GROUPABLE}"
        query = select(UsageRecord).where(
            UsageRecord.organization_id == organization_id,
            UsageRecord.created_at >= datetime.fromtimestamp(start, timezone.utc),
            UsageRecord.created_at < datetime.fromtimestamp(end, timezone.utc),
        )
        if operations is not None:
            query = query.where(UsageRecord.operation.in_(operations))
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
                UsageGroup(int(row[0]), tuple(row[1 : 1 + len(group_by)]), int(row[-3]), int(row[-2]), int(row[-1]))
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
    )
