"""The usage ledger: one row per generation, written once, summed for reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

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
