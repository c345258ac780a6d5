"""Which limits apply to a request: rate limits resolved project → organization → settings, and
the quotas of the organization and the project, read from the store and cached briefly.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.config import ModelPrice
from modelhost.limits.errors import LimitsUnavailable
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


RATE_LIMIT_FIELDS = tuple(f.name for f in fields(RateLimits))
assert RATE_LIMIT_FIELDS == stored.RATE_LIMIT_FIELDS, "store and policy name the same fields"


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


def cost(unit: str, model: str, prompt_tokens: int, completion_tokens: int, prices: Mapping[str, ModelPrice]) -> int:
    """What tokens cost in `unit`: tokens, or millionths of a dollar (rounded up).

    Prices are per million tokens, so a token costs `price` millionths of a dollar. A model
    without a price uses the ``"*"`` price if there is one, else costs nothing.
    """
    if unit == "tokens":
        return prompt_tokens + completion_tokens
    price = prices.get(model) or prices.get("*")
    if price is None:
        return 0
    return math.ceil(prompt_tokens * price.input + completion_tokens * price.output - 1e-9)


def resolve(
    rows: Sequence[RateLimitSetting], defaults: RateLimits, project_id: str | None, model: str
) -> tuple[RateLimits, dict[str, str]]:
    """Each field from the most specific row that sets it; also where each value came from.

    Order: the project's row for the model, the project's row for all models (``*``), the
    organization's for the model, the organization's for all, then the settings.
    """

    def rank(row: RateLimitSetting) -> int:
        return (0 if row.scope == "project" else 2) + (0 if row.model == model else 1)

    ordered = sorted((r for r in rows if r.scope == "organization" or r.scope_id == project_id), key=rank)
    values: dict[str, int] = {}
    sources: dict[str, str] = {}
    for name in RATE_LIMIT_FIELDS:
        for row in ordered:
            value = getattr(row, name)
            if value is not None:
                values[name] = value
                sources[name] = f"{row.scope} {row.scope_id} ({'all models' if row.model == stored.ALL_MODELS else row.model})"
                break
        else:
            values[name] = getattr(defaults, name)
            sources[name] = "settings"
    return RateLimits(**values), sources


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
        self._cache: dict[tuple[str, str, str], tuple[float, RateLimits, tuple[Quota, ...]]] = {}
        self._lock = threading.Lock()

    def lookup(self, organization_id: str, project_id: str, model: str) -> tuple[RateLimits, tuple[Quota, ...]]:
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
