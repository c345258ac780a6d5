"""Reading and changing rate limits and quotas: one code path for the CLI and the Administration API.

Each method opens its own transaction and returns plain dicts ready to print or send as JSON.
Mistakes raise `InvalidRequest` (400) or `NotFound` (404) with a message for the operator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

from sqlalchemy import BigInteger
from sqlalchemy.orm import Session, sessionmaker

from modelhost.config import Settings
from modelhost.errors import InvalidRequest, NotFound
from modelhost.limits import RateLimits, default_rate_limits
from modelhost.limits.prices import PriceTable
from modelhost.limits.policy import (
    MICRO,
    PERIODS,
    RATE_LIMIT_FIELDS,
    UNITS,
    AppliedLimits,
    cost,
    current_period,
    resolve,
)
from modelhost.organization import Scope as AdminScope
from modelhost.organization import audit
from modelhost.store import UsageLedger
from modelhost.store import limits as stored
from modelhost.store import tenancy
from modelhost.store.schema import Project, QuotaSetting, RateLimitSetting

#: The fields of OpenAI's project rate-limit object that modelhost enforces.
OPENAI_FIELDS = (
    "max_requests_per_1_minute",
    "max_tokens_per_1_minute",
    "max_requests_per_1_day",
    "batch_1_day_max_input_tokens",
)
RATE_LIMIT_ID_PREFIX = "rl-"
#: The largest value of each field: what its column holds (PostgreSQL's INTEGER is 32 bits, so a
#: larger value was a 500 there), and at most 2^53 (Redis's Lua counts in doubles).
LARGEST = {
    name: 2**53 if isinstance(RateLimitSetting.__table__.c[name].type, BigInteger) else 2**31 - 1
    for name in RATE_LIMIT_FIELDS
}


@dataclass(frozen=True)
class LimitScope:
    """An organization or a project that limits are set on."""

    kind: str  # "organization" or "project"
    id: str
    organization_id: str


#: The models a project may use, as ``usable(session, organization_id, project_id)`` → ids.
UsableModels = Callable[[Session, str, str], Sequence[str]]


class LimitSettings:
    """Rate limits and quotas as stored, plus what they resolve to for the `models` served.

    With `usable`, a project's limits are listed (and can be changed) only for the models the
    project may use: the Administration API must not name a model the operator hides from it.
    Money quotas are priced by `prices` (the server passes its limiter's table; default: the settings').
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        models: Sequence[str],
        *,
        usable: UsableModels | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._prices = prices if prices is not None else PriceTable(settings.prices)
        self._models = tuple(models)
        self._usable = usable

    # -- scopes -----------------------------------------------------------------------------------
    def scope(self, *, organization: str | None = None, project: str | None = None) -> LimitScope:
        """The project (if named) or else the organization (id or name) that a command is about."""
        with self._sessions() as session:
            return self._scope(session, organization, project)

    def _scope(self, session: Session, organization: str | None, project: str | None) -> LimitScope:
        org_id = None
        if organization:
            org = tenancy.find_organization(session, organization)
            if org is None:
                raise NotFound(f"No organization {organization!r}.", param="organization")
            org_id = org.id
        if project:
            found = session.get(Project, project)
            if found is None or (org_id is not None and found.organization_id != org_id):
                raise NotFound(f"No project {project!r}" + (f" in organization {org_id}." if org_id else "."), param="project")
            return LimitScope("project", found.id, found.organization_id)
        if org_id is None:
            raise InvalidRequest("Name an organization (--org) or a project (--project).")
        return LimitScope("organization", org_id, org_id)

    # -- rate limits ------------------------------------------------------------------------------
    def set_rate_limits(self, scope: LimitScope, values: Mapping[str, int | None], *, model: str = stored.ALL_MODELS) -> dict[str, object]:
        """Set the operator's limits of `scope` for `model` (``*``: all models); None inherits, 0 is no limit.

        A project's may not be above its organization's (which cap all its projects together):
        raise the organization's first.
        """
        self._check(values, model=model)
        if not model or len(model) > 256:
            raise InvalidRequest("Invalid model name.", param="model")
        with self._sessions() as session:
            if scope.kind == "project":
                organization = self._applied(session, scope.organization_id, None, model).organization
                _at_most(values, organization, model, "its organization's limit")
            row = stored.put_rate_limit(
                session, organization_id=scope.organization_id, scope=scope.kind, scope_id=scope.id, model=model, values=values
            )
            if scope.kind == "project" and model != stored.ALL_MODELS:  # what OpenAI's audit log knows of
                audit.record(
                    session,
                    AdminScope(scope.organization_id),  # no principal: the CLI
                    "rate_limits.updated",
                    f"{RATE_LIMIT_ID_PREFIX}{model}",
                    {"changes_requested": dict(values)},
                    project=session.get(Project, scope.id),
                )
            session.commit()
            return {**_row(row), "effective": self._effective(session, scope)}

    @staticmethod
    def _check(values: Mapping[str, int | None], *, model: str) -> None:
        unknown = set(values) - set(RATE_LIMIT_FIELDS)
        assert not unknown, f"unknown rate limit fields {unknown}"
        for name, value in values.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= LARGEST[name]):
                raise InvalidRequest(
                    f"Invalid value for '{name}': a whole number from 0 to {LARGEST[name]} (0 means no limit).", param=name
                )
        if model != stored.ALL_MODELS and values.get("max_concurrent_requests") is not None:
            raise InvalidRequest(
                "Concurrent requests are capped per key over all models: set them without a model.",
                param="max_concurrent_requests",
            )

    def show_rate_limits(self, scope: LimitScope | None) -> dict[str, object]:
        """What is set on `scope` (or everywhere) and, per model, what it resolves to."""
        defaults = default_rate_limits(self._settings).__dict__
        with self._sessions() as session:
            if scope is None:
                rows = stored.all_rate_limits(session)
                return {"object": "rate_limits", "defaults": defaults, "configured": [_row(r) for r in rows]}
            return {
                "object": "rate_limits",
                "scope": scope.kind,
                "scope_id": scope.id,
                "organization": scope.organization_id,
                "defaults": defaults,
                "configured": [_row(r) for r in stored.rate_limits_of(session, scope.kind, scope.id)],
                "effective": self._effective(session, scope),
            }

    def _models_of(self, session: Session, scope: LimitScope) -> list[str]:
        if scope.kind == "project" and self._usable is not None:
            return sorted(self._usable(session, scope.organization_id, scope.id))
        models = set(self._models)
        for row in stored.rate_limits_of(session, "organization", scope.organization_id):
            models.add(row.model)
        if scope.kind == "project":
            models.update(row.model for row in stored.rate_limits_of(session, "project", scope.id))
        models.discard(stored.ALL_MODELS)
        return sorted(models)

    def _applied(
        self, session: Session, organization_id: str, project_id: str | None, model: str, *, operator_only: bool = False
    ) -> AppliedLimits:
        rows = stored.rate_limits_for(session, organization_id, project_id, model)
        if operator_only:
            rows = [row for row in rows if row.set_by == stored.OPERATOR]
        return resolve(rows, default_rate_limits(self._settings), project_id, model)[0]

    def _effective(self, session: Session, scope: LimitScope) -> list[dict[str, object]]:
        project_id = scope.id if scope.kind == "project" else None
        out = []
        for model in self._models_of(session, scope):
            rows = stored.rate_limits_for(session, scope.organization_id, project_id, model)
            applied, sources = resolve(rows, default_rate_limits(self._settings), project_id, model)
            out.append({"model": model, **applied.effective.__dict__, "source": sources})
        return out

    # -- the Administration API's project rate limits ---------------------------------------------
    def project_rate_limits(self, organization_id: str, project_id: str) -> list[dict[str, object]]:
        """OpenAI's ``project.rate_limit`` objects of a project of `organization_id` (404 otherwise)."""
        with self._sessions() as session:
            scope = self._project(session, organization_id, project_id)
            return [_openai_object(e) for e in self._effective(session, scope)]

    def update_project_rate_limit(
        self, actor: AdminScope, project_id: str, rate_limit_id: str, changes: Mapping[str, int]
    ) -> dict[str, object]:
        """Set the project's own limits for the model `rate_limit_id` names (``rl-MODEL``).

        An admin key can only hold a project below what the operator allows it: each value must
        be at most the organization's limit and any limit the operator set on the project (0, no
        limit, only where neither has one); otherwise a 400 names the field. The values are kept
        beside the operator's, never in their place. The change and its ``rate_limits.updated``
        audit event commit together.
        """
        values = {k: v for k, v in changes.items() if k in OPENAI_FIELDS}
        self._check(values, model="")
        with self._sessions() as session:
            scope = self._project(session, actor.organization_id, project_id)
            model = rate_limit_id[len(RATE_LIMIT_ID_PREFIX) :] if rate_limit_id.startswith(RATE_LIMIT_ID_PREFIX) else ""
            if model not in self._models_of(session, scope):
                raise NotFound(f"No rate limit found with id '{rate_limit_id[:128]}'.")
            ceiling = self._applied(session, scope.organization_id, scope.id, model, operator_only=True).effective
            _at_most(values, ceiling, model, "the most the operator allows this project")
            stored.put_rate_limit(
                session,
                organization_id=scope.organization_id,
                scope="project",
                scope_id=scope.id,
                model=model,
                values=values,
                set_by=stored.ADMIN,
            )
            audit.record(
                session,
                actor,
                "rate_limits.updated",
                rate_limit_id,
                {"changes_requested": dict(values)},
                project=session.get(Project, project_id),
            )
            session.commit()
            return next(_openai_object(e) for e in self._effective(session, scope) if e["model"] == model)

    def _project(self, session: Session, organization_id: str, project_id: str) -> LimitScope:
        project = session.get(Project, project_id)
        if project is None or project.organization_id != organization_id:
            raise NotFound(f"No project found with id '{project_id[:128]}'.")
        return LimitScope("project", project.id, organization_id)

    # -- quotas -----------------------------------------------------------------------------------
    def set_quota(
        self, scope: LimitScope, *, unit: str, period: str, hard_limit: str | None, soft_limit: str | None
    ) -> dict[str, object]:
        """Give `scope` a budget per `period` in `unit`; amounts are tokens or dollars ("12.50").

        Without either limit, the quota is removed.
        """
        if unit not in UNITS:
            raise InvalidRequest(f"Invalid unit {unit!r}: one of {', '.join(UNITS)}.", param="unit")
        if period not in PERIODS:
            raise InvalidRequest(f"Invalid period {period!r}: one of {', '.join(PERIODS)}.", param="period")
        hard, soft = _parse_amount(unit, hard_limit, "hard_limit"), _parse_amount(unit, soft_limit, "soft_limit")
        with self._sessions() as session:
            organization = stored.quota_of(session, "organization", scope.organization_id)
            if (
                scope.kind == "project"
                and hard is not None
                and organization is not None
                and organization.hard_limit is not None
                and (organization.unit, organization.period) == (unit, period)
                and hard > organization.hard_limit
            ):
                raise InvalidRequest(
                    f"Invalid hard_limit: a project's quota may be at most its organization's "
                    f"({_show_amount(unit, organization.hard_limit)} {unit} per {period}), which counts all its projects.",
                    param="hard_limit",
                )
            if hard is None and soft is None:
                removed = stored.delete_quota(session, scope.kind, scope.id)
                session.commit()
                return {"object": "quota.deleted", "scope": scope.kind, "scope_id": scope.id, "deleted": removed}
            row = stored.put_quota(
                session,
                organization_id=scope.organization_id,
                scope=scope.kind,
                scope_id=scope.id,
                unit=unit,
                period=period,
                hard_limit=hard,
                soft_limit=soft,
            )
            session.commit()
            return self._quota_view(row)

    def show_quotas(self, scope: LimitScope | None) -> list[dict[str, object]]:
        """Quotas (of `scope`, or all) with what their scope spent so far this period, per the ledger."""
        with self._sessions() as session:
            if scope is None:
                rows = stored.list_quotas(session)
            else:
                row = stored.quota_of(session, scope.kind, scope.id)
                rows = [row] if row is not None else []
        return [self._quota_view(row) for row in rows]

    def _quota_view(self, row: QuotaSetting) -> dict[str, object]:
        now = datetime.now(timezone.utc)
        period = current_period(row.period, now)
        spent = UsageLedger(self._sessions).spent(since=period.start, until=period.end, organization_id=row.organization_id)
        used = sum(
            cost(row.unit, s.model, s.prompt_tokens, s.completion_tokens, self._prices, batch=s.batch)
            for s in spent
            if row.scope == "organization" or s.project_id == row.scope_id
        )
        return {
            "object": "quota",
            "id": row.id,
            "scope": row.scope,
            "scope_id": row.scope_id,
            "organization": row.organization_id,
            "unit": row.unit,
            "period": row.period,
            "hard_limit": _show_amount(row.unit, row.hard_limit),
            "soft_limit": _show_amount(row.unit, row.soft_limit),
            "period_start": period.start.isoformat(),
            "period_end": period.end.isoformat(),
            "used": _show_amount(row.unit, used),
            "hard_limit_reached": row.hard_limit is not None and used >= row.hard_limit,
            "soft_limit_reached": row.soft_limit is not None and used >= row.soft_limit,
        }


def _row(row: RateLimitSetting) -> dict[str, object]:
    return {
        "id": row.id,
        "scope": row.scope,
        "scope_id": row.scope_id,
        "organization": row.organization_id,
        "model": row.model,
        "set_by": row.set_by,
        **{name: getattr(row, name) for name in RATE_LIMIT_FIELDS},
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }


def _at_most(values: Mapping[str, int | None], ceiling: RateLimits, model: str, whose: str) -> None:
    """Refuse (400, naming the field) a value that would lift a limit above `ceiling` (0: none)."""
    for name, value in values.items():
        most = getattr(ceiling, name)
        if value is not None and most and (value == 0 or value > most):
            shown = "0 (no limit)" if value == 0 else str(value)
            raise InvalidRequest(
                f"Invalid value for '{name}': {shown} is above {most}, {whose} for "
                f"{'all models' if model == stored.ALL_MODELS else model}. "
                "A project's rate limits can only be lower than its organization's.",
                param=name,
            )


def _openai_object(effective: Mapping[str, object]) -> dict[str, object]:
    return {
        "object": "project.rate_limit",
        "id": f"{RATE_LIMIT_ID_PREFIX}{effective['model']}",
        "model": effective["model"],
        **{name: effective[name] for name in OPENAI_FIELDS},
    }


def _parse_amount(unit: str, text: str | None, param: str) -> int | None:
    """``"1500"`` tokens → 1500; ``"12.50"`` dollars → 12_500_000 millionths; None or "none" → None."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    try:
        amount = Decimal(str(text).strip().lstrip("$"))
    except InvalidOperation:
        raise InvalidRequest(f"Invalid {param} {text!r}: a number, or 'none'.", param=param) from None
    if not amount.is_finite() or amount < 0:
        raise InvalidRequest(f"Invalid {param} {text!r}: a number ≥ 0.", param=param)
    if unit == "tokens":
        if amount != amount.to_integral_value():
            raise InvalidRequest(f"Invalid {param} {text!r}: tokens are whole numbers.", param=param)
        value = int(amount)
    else:
        value = int((amount * MICRO).to_integral_value())
    if value > 2**62:
        raise InvalidRequest(f"Invalid {param} {text!r}: too large.", param=param)
    return value


def _show_amount(unit: str, value: int | None) -> float | int | None:
    if value is None:
        return None
    return round(value / MICRO, 6) if unit == "usd" else value
