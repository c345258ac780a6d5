"""Rate limits and quotas with OpenAI's semantics, counted in-process or in Redis.

`open_limiter(settings, sessions, ledger)` picks the store: Redis when `MODELHOST_REDIS_URL` is
set (many replicas share it), else this process's memory. Both implement `LimitBackend`.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from modelhost.config import Settings
from modelhost.limits.base import LimitBackend, LimiterUnavailable
from modelhost.limits.errors import EnqueuedTokenLimitExceeded, LimitsUnavailable, QuotaExceeded, RateLimitExceeded
from modelhost.limits.limiter import Admission, Limiter, Reservation
from modelhost.limits.memory import MemoryBackend
from modelhost.limits.policy import AppliedLimits, LimitPolicy, Quota, RateLimits
from modelhost.limits.prices import PriceTable
from modelhost.store import UsageLedger

__all__ = [
    "Admission",
    "AppliedLimits",
    "EnqueuedTokenLimitExceeded",
    "LimitBackend",
    "LimitPolicy",
    "Limiter",
    "PriceTable",
    "LimiterUnavailable",
    "LimitsUnavailable",
    "MemoryBackend",
    "Quota",
    "QuotaExceeded",
    "RateLimitExceeded",
    "RateLimits",
    "Reservation",
    "default_rate_limits",
    "open_limiter",
]


def default_rate_limits(settings: Settings) -> RateLimits:
    """An organization's limits per model (all its projects together) where the operator set none for it."""
    return RateLimits(
        max_requests_per_1_minute=settings.rate_limit_requests_per_minute,
        max_tokens_per_1_minute=settings.rate_limit_tokens_per_minute,
        max_requests_per_1_day=settings.rate_limit_requests_per_day,
        max_concurrent_requests=settings.rate_limit_concurrent_requests_per_key,
        batch_1_day_max_input_tokens=settings.rate_limit_batch_enqueued_tokens,
    )


def open_limiter(
    settings: Settings, sessions: sessionmaker[Session], ledger: UsageLedger, *, prices: PriceTable | None = None
) -> Limiter:
    """The limiter the settings ask for: Redis-backed with `redis_url`, in-process without.

    `prices`: the models file's table (`ModelCatalog.prices`); default: the settings' prices.
    """
    backend: LimitBackend
    if settings.redis_url:
        from modelhost.limits.redis_backend import RedisBackend

        backend = RedisBackend(settings.redis_url, timeout=settings.redis_timeout_seconds)
    else:
        backend = MemoryBackend()
    policy = LimitPolicy(sessions, default_rate_limits(settings), cache_seconds=settings.limits_cache_seconds)
    return Limiter(
        backend,
        policy,
        ledger,
        prices=prices if prices is not None else PriceTable(settings.prices),
        key_prefix=settings.redis_key_prefix,
        lease_seconds=settings.limits_lease_seconds,
    )
