"""Rate-limit and quota settings: the store's half of `modelhost.limits`.

Functions take an open `Session` and commit nothing themselves; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import BigInteger, String, and_, case, column, func, or_, select, table
from sqlalchemy.orm import Session

from modelhost.ids import new_id
from modelhost.store.schema import QuotaSetting, RateLimitSetting
from modelhost.store.tenancy import utcnow

ALL_MODELS = "*"
# Who set a rate limit row: the operator (the CLI: organization and project rows) or an
# organization's admin key (the Administration API: project rows only). An admin row can only
# tighten a project below what the operator allows; it never replaces an operator row.
OPERATOR = "operator"
ADMIN = "admin"
SETTERS = (OPERATOR, ADMIN)
RATE_LIMIT_FIELDS = (
    "max_requests_per_1_minute",
    "max_tokens_per_1_minute",
    "max_requests_per_1_day",
    "max_concurrent_requests",
    "batch_1_day_max_input_tokens",
)


def _scopes(organization_id: str, project_id: str | None):  # type: ignore[no-untyped-def]
    wanted = [and_(RateLimitSetting.scope == "organization", RateLimitSetting.scope_id == organization_id)]
    if project_id:
        wanted.append(and_(RateLimitSetting.scope == "project", RateLimitSetting.scope_id == project_id))
    return or_(*wanted)


def rate_limits_for(session: Session, organization_id: str, project_id: str | None, model: str) -> list[RateLimitSetting]:
    """The rows that can shape `model`'s limits in this project: its own and its organization's."""
    return list(
        session.scalars(
            select(RateLimitSetting).where(
                RateLimitSetting.organization_id == organization_id,
                _scopes(organization_id, project_id),
                RateLimitSetting.model.in_((model, ALL_MODELS)),
            )
        )
    )


def rate_limits_of(session: Session, scope: str, scope_id: str) -> list[RateLimitSetting]:
    """The rows set on one organization or project, by model (the operator's before the admin's)."""
    return list(
        session.scalars(
            select(RateLimitSetting)
            .where(RateLimitSetting.scope == scope, RateLimitSetting.scope_id == scope_id)
            .order_by(RateLimitSetting.model, RateLimitSetting.set_by.desc())
        )
    )


def all_rate_limits(session: Session) -> list[RateLimitSetting]:
    return list(
        session.scalars(
            select(RateLimitSetting).order_by(
                RateLimitSetting.organization_id,
                RateLimitSetting.scope,
                RateLimitSetting.scope_id,
                RateLimitSetting.model,
                RateLimitSetting.set_by.desc(),
            )
        )
    )


def put_rate_limit(
    session: Session,
    *,
    organization_id: str,
    scope: str,
    scope_id: str,
    model: str,
    values: Mapping[str, int | None],
    set_by: str = OPERATOR,
) -> RateLimitSetting:
    """Create or change `set_by`'s row of (scope, model): only the fields in `values` change (None: inherit)."""
    assert set(values) <= set(RATE_LIMIT_FIELDS), f"rate limit fields are {RATE_LIMIT_FIELDS}"
    assert set_by in SETTERS and (set_by == OPERATOR or scope == "project"), "admins set project limits only"
    row = session.scalar(
        select(RateLimitSetting).where(
            RateLimitSetting.scope == scope,
            RateLimitSetting.scope_id == scope_id,
            RateLimitSetting.model == model,
            RateLimitSetting.set_by == set_by,
        )
    )
    now = utcnow()
    if row is None:
        row = RateLimitSetting(
            id=new_id("rl_"),
            organization_id=organization_id,
            scope=scope,
            scope_id=scope_id,
            model=model,
            set_by=set_by,
            created_at=now,
        )
        session.add(row)
    for name, value in values.items():
        setattr(row, name, value)
    row.updated_at = now
    session.flush()
    return row


def quotas_for(session: Session, organization_id: str, project_id: str | None) -> list[QuotaSetting]:
    """The quotas a request of this project counts against: its organization's and its own."""
    wanted = [and_(QuotaSetting.scope == "organization", QuotaSetting.scope_id == organization_id)]
    if project_id:
        wanted.append(and_(QuotaSetting.scope == "project", QuotaSetting.scope_id == project_id))
    return list(session.scalars(select(QuotaSetting).where(QuotaSetting.organization_id == organization_id, or_(*wanted))))


def quota_of(session: Session, scope: str, scope_id: str) -> QuotaSetting | None:
    return session.scalar(select(QuotaSetting).where(QuotaSetting.scope == scope, QuotaSetting.scope_id == scope_id))


def list_quotas(session: Session, organization_id: str | None = None) -> list[QuotaSetting]:
    query = select(QuotaSetting).order_by(QuotaSetting.organization_id, QuotaSetting.scope, QuotaSetting.scope_id)
    if organization_id is not None:
        query = query.where(QuotaSetting.organization_id == organization_id)
    return list(session.scalars(query))


def put_quota(
    session: Session,
    *,
    organization_id: str,
    scope: str,
    scope_id: str,
    unit: str,
    period: str,
    hard_limit: int | None,
    soft_limit: int | None,
) -> QuotaSetting:
    """Create or replace the quota of one organization or project."""
    row = quota_of(session, scope, scope_id)
    now = utcnow()
    if row is None:
        row = QuotaSetting(
            id=new_id("quota_"), organization_id=organization_id, scope=scope, scope_id=scope_id, created_at=now
        )
        session.add(row)
    row.unit, row.period, row.hard_limit, row.soft_limit, row.updated_at = unit, period, hard_limit, soft_limit, now
    session.flush()
    return row


def delete_quota(session: Session, scope: str, scope_id: str) -> bool:
    row = quota_of(session, scope, scope_id)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


#: The `batches` table's columns the enqueued-token limit reads (the table is the batches API's,
#: migration 0009): named here rather than imported, so limits never depend on that module.
_BATCHES = table(
    "batches",
    column("id", String),
    column("organization_id", String),
    column("project_id", String),
    column("model", String),
    column("status", String),
    column("enqueued_tokens", BigInteger),
)
#: A batch in one of these states has ended: its lines hold no tokens enqueued any more.
ENDED_BATCH_STATES = ("completed", "failed", "expired", "cancelled")


def enqueued_batch_tokens(
    session: Session, organization_id: str, project_id: str, model: str, *, excluding: str | None = None
) -> tuple[int, int]:
    """Input tokens the unfinished batches for `model` hold enqueued: (the organization's, the project's).

    `excluding`: a batch id left out (the one being checked, if its row is written already).
    """
    batches = _BATCHES
    wanted = [
        batches.c.organization_id == organization_id,
        batches.c.model == model,
        batches.c.status.not_in(ENDED_BATCH_STATES),
    ]
    if excluding is not None:
        wanted.append(batches.c.id != excluding)
    tokens = batches.c.enqueued_tokens
    in_project = case((batches.c.project_id == project_id, tokens), else_=0)
    row = session.execute(
        select(func.coalesce(func.sum(tokens), 0), func.coalesce(func.sum(in_project), 0)).select_from(batches).where(*wanted)
    ).one()
    return int(row[0]), int(row[1])
