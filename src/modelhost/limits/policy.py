"""Which limits apply to a request: the organization's rate limits (its own, else the settings),
the project's own (never looser than its organization's), and the quotas of the organization and
the project, read from the store and cached briefly.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.limits.errors import LimitsUnavailable
from modelhost.limits.prices import PriceTable
from modelhost.store import limits as stored
from modelhost.store.schema import QuotaSetting, RateLimitSetting

UNITS = ("tokens", "usd")
PERIODS = ("day", "week", "month")
MICRO = 1_000_000  # money is counted in millionths of a dollar


@dataclass(frozen=True)
class RateLimits:
    """One project's limits for one model; 0 means no limit. Field names are OpenAI's."""

    max_requests_per_1_minute: int
    max_tokens_per_1_minute: int
    max_requests_per_1_day: int
    max_concurrent_requests: int  # per key, over all models
    # Input tokens the unfinished batches may hold enqueued for the model: met when a batch is
    # created (`Limiter.check_batch_enqueue`), never per request.
    batch_1_day_max_input_tokens: int = 0


RATE_LIMIT_FIELDS = tuple(f.name for f in fields(RateLimits))
assert RATE_LIMIT_FIELDS == stored.RATE_LIMIT_FIELDS, "store and policy name the same fields"


def tighter(*limits: int) -> int:
    """The strictest of some limits where 0 means none: ``tighter(0, 60, 90) == 60``; all 0 → 0."""
    return min((limit for limit in limits if limit), default=0)


@dataclass(frozen=True)
class AppliedLimits:
    """The rate limits one project meets for one model, at two levels (0: none at that level).

    `organization` caps the organization as a whole, per model: the requests of all its projects
    count against it together, so more projects never mean more capacity. It is the operator's:
    the organization's rows (only the CLI writes them), else the settings. `project` is the
    project's own, from the operator's project rows and the organization admin's (the
    Administration API's) alike, the tighter of them. A project can only be held below its
    organization, never above: `effective` is the tighter of the two.
    """

    organization: RateLimits
    project: RateLimits

    @functools.cached_property
    def effective(self) -> RateLimits:  # cached: the policy hands out one object per cache period
        return RateLimits(
            **{name: tighter(getattr(self.organization, name), getattr(self.project, name)) for name in RATE_LIMIT_FIELDS}
        )


@dataclass(frozen=True)
class Quota:
    """A budget of an organization or project: `hard_limit` refuses, `soft_limit` only warns.

    Limits are in the unit's smallest step: tokens, or millionths of a dollar. None: not set.
    """

    scope: str
    scope_id: str
    unit: str
    period: str
    hard_limit: int | None
    soft_limit: int | None


@dataclass(frozen=True)
class Period:
    """One calendar period (UTC) of a quota: `start` ≤ t < `end`."""

    name: str
    start: datetime
    end: datetime

    @property
    def label(self) -> str:
        return self.start.strftime("%Y%m%d")


def current_period(name: str, now: datetime) -> Period:
    """The day, ISO week (from Monday) or month that `now` falls in."""
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if name == "day":
        return Period(name, day, day + timedelta(days=1))
    if name == "week":
        start = day - timedelta(days=day.weekday())
        return Period(name, start, start + timedelta(days=7))
    assert name == "month", f"periods are {PERIODS}"
    start = day.replace(day=1)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return Period(name, start, end)


def cost(
    unit: str, model: str, prompt_tokens: int, completion_tokens: int, prices: PriceTable, *, batch: bool = False
) -> int:
    """What tokens cost in `unit`: tokens, or millionths of a dollar (rounded up).

    Prices are per million tokens, so a token costs `price` millionths of a dollar
    (`PriceTable.price_of`: a model without a price costs the ``"*"`` price, else nothing); batch
    work costs its multiple of that (tokens are tokens either way).
    """
    if unit == "tokens":
        return prompt_tokens + completion_tokens
    price = prices.price_of(model, batch=batch)
    return math.ceil(prompt_tokens * price.input + completion_tokens * price.output - 1e-9)


def _describe(row: RateLimitSetting) -> str:
    who = "" if row.set_by == stored.OPERATOR else f", set by the {row.set_by}"
    return f"{row.scope} {row.scope_id} ({'all models' if row.model == stored.ALL_MODELS else row.model}{who})"


def _most_specific(rows: Sequence[RateLimitSetting], name: str, model: str) -> RateLimitSetting | None:
    """The row for `model` if it sets field `name`, else the row for all models if it does."""
    for wanted in (model, stored.ALL_MODELS):
        for row in rows:
            if row.model == wanted and getattr(row, name) is not None:
                return row
    return None


def resolve(
    rows: Sequence[RateLimitSetting], defaults: RateLimits, project_id: str | None, model: str
) -> tuple[AppliedLimits, dict[str, str]]:
    """The limits of `model` in the project (None: the organization alone), and where each
    effective value comes from.

    Each field is resolved on each level on its own, the row for the model before the row for all
    models (``*``): the organization's level from the operator's organization rows, else the
    settings; the project's from the operator's project rows and the admin's project rows, the
    tighter one. A 0 on the project level means "nothing of its own": it never lifts the
    organization's limit.
    """
    org_rows = [r for r in rows if r.scope == "organization" and r.set_by == stored.OPERATOR]
    project_rows = {
        who: [r for r in rows if r.scope == "project" and r.scope_id == project_id and r.set_by == who]
        for who in stored.SETTERS
    }
    organization: dict[str, int] = {}
    project: dict[str, int] = {}
    sources: dict[str, str] = {}
    for name in RATE_LIMIT_FIELDS:
        row = _most_specific(org_rows, name, model)
        organization[name] = getattr(defaults, name) if row is None else getattr(row, name)
        sources[name] = "settings" if row is None else _describe(row)
        project[name] = 0
        for candidates in project_rows.values():
            own = _most_specific(candidates, name, model)
            if own is not None and getattr(own, name) and tighter(project[name], getattr(own, name)) != project[name]:
                project[name] = getattr(own, name)
                if tighter(organization[name], project[name]) != organization[name]:
                    sources[name] = _describe(own)  # strictly tighter than the organization: it applies
    return AppliedLimits(RateLimits(**organization), RateLimits(**project)), sources


def quota_from(row: QuotaSetting) -> Quota:
    return Quota(row.scope, row.scope_id, row.unit, row.period, row.hard_limit, row.soft_limit)


class LimitPolicy:
    """Reads a request's limits from the store, trusting an answer for `cache_seconds`.

    A changed limit therefore takes effect within `cache_seconds` on every replica. A store that
    cannot be read raises `LimitsUnavailable` (the request is refused, never let through).
    """

    def __init__(self, sessions: sessionmaker[Session], defaults: RateLimits, *, cache_seconds: float = 5.0) -> None:
        self._sessions = sessions
        self.defaults = defaults
        self._cache_seconds = cache_seconds
        self._cache: dict[tuple[str, str, str], tuple[float, AppliedLimits, tuple[Quota, ...]]] = {}
        self._lock = threading.Lock()

    def lookup(self, organization_id: str, project_id: str, model: str) -> tuple[AppliedLimits, tuple[Quota, ...]]:
        """Rate limits and quotas for a request of this project to `model` (blocking: run in a thread)."""
        key = (organization_id, project_id, model)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        try:
            with self._sessions() as session:
                rows = stored.rate_limits_for(session, organization_id, project_id, model)
                quotas = tuple(quota_from(q) for q in stored.quotas_for(session, organization_id, project_id))
        except SQLAlchemyError as exc:
            raise LimitsUnavailable() from exc
        limits, _ = resolve(rows, self.defaults, project_id, model)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + self._cache_seconds, limits, quotas)
        return limits, quotas

    def enqueued_batch_tokens(
        self, organization_id: str, project_id: str, model: str, *, excluding: str | None = None
    ) -> tuple[int, int]:
        """Input tokens the unfinished batches for `model` hold: the organization's, the project's (blocking)."""
        try:
            with self._sessions() as session:
                return stored.enqueued_batch_tokens(session, organization_id, project_id, model, excluding=excluding)
        except SQLAlchemyError as exc:
            raise LimitsUnavailable() from exc
