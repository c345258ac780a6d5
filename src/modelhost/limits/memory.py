"""Counters in this process: the zero-setup default, right for one server process.

One `threading.Lock` makes each `acquire` and `settle` atomic (the event loop never switches
inside them, and the lock also covers callers on other threads). Several processes each get their
own counters: run replicas with `MODELHOST_REDIS_URL` instead.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence

from modelhost.limits.base import Adjustment, Budget, Bucket, Charge, ChargeState, Lease, Outcome, refill

_SWEEP_EVERY = 1000  # operations between sweeps of expired counters


class MemoryBackend:
    """`LimitBackend` in a dict; `clock` returns seconds (wall-clock time unless a test swaps it)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key → (level, written at, full at)
        self._budgets: dict[str, tuple[int, float, str]] = {}  # key → (used, expires at, generation)
        self._leases: dict[str, dict[str, float]] = {}  # key → member → expires at
        self._generations = itertools.count(1)
        self._operations = 0

    async def acquire(self, charges: Sequence[Charge]) -> Outcome:
        with self._lock:
            now = self._clock()
            self._maybe_sweep(now)
            states: list[ChargeState] = []
            missing: list[str] = []
            for charge in charges:
                if isinstance(charge, Bucket):
                    states.append(self._check_bucket(charge, now))
                elif isinstance(charge, Budget):
                    found = self._budget(charge.key, now)
                    if found is None:
                        missing.append(charge.key)
                        states.append(ChargeState(False, 0))
                    else:
                        used, epoch = found
                        fits = charge.limit is None or used + charge.amount <= charge.limit
                        states.append(ChargeState(fits, used + charge.amount if fits else used, epoch=epoch))
                else:
                    holders = self._holders(charge.key, now)
                    fits = len(holders) < charge.limit
                    states.append(ChargeState(fits, len(holders) + 1 if fits else len(holders)))
            outcome = Outcome(tuple(states), tuple(missing))
            if outcome.allowed:
                for charge in charges:
                    self._take(charge, now)
            return outcome

    async def seed(self, key: str, value: int, ttl: float) -> None:
        with self._lock:
            now = self._clock()
            if self._budget(key, now) is None:
                self._budgets[key] = (value, now + ttl, str(next(self._generations)))

    async def settle(self, adjustments: Sequence[Adjustment]) -> tuple[int | None, ...]:
        with self._lock:
            now = self._clock()
            values: list[int | None] = []
            for adjustment in adjustments:
                charge = adjustment.charge
                value: int | None = None
                if isinstance(charge, Bucket):
                    level = self._bucket_level(charge, now)
                    self._put_bucket(charge, min(float(charge.capacity), level + adjustment.amount), now)
                elif isinstance(charge, Budget):
                    found = self._budget(charge.key, now)
                    if found is not None:
                        used, epoch = found
                        # A counter re-seeded since the acquire never held the reservation.
                        added = adjustment.amount if epoch == adjustment.epoch else charge.amount + adjustment.amount
                        value = used + added
                        self._budgets[charge.key] = (value, self._budgets[charge.key][1], epoch)
                else:
                    self._leases.get(charge.key, {}).pop(charge.member, None)
                values.append(value)
            return tuple(values)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    # -- inside the lock ------------------------------------------------------------------------
    def _bucket_level(self, bucket: Bucket, now: float) -> float:
        found = self._buckets.get(bucket.key)
        if found is None:
            return float(bucket.capacity)
        return refill(found[0], found[1], now, bucket.capacity, bucket.period)

    def _put_bucket(self, bucket: Bucket, level: float, now: float) -> None:
        updated = max(now, self._buckets.get(bucket.key, (0.0, now, now))[1])
        full_at = updated + (bucket.capacity - level) * bucket.period / bucket.capacity
        self._buckets[bucket.key] = (level, updated, full_at)

    def _check_bucket(self, bucket: Bucket, now: float) -> ChargeState:
        level = self._bucket_level(bucket, now)
        rate = bucket.capacity / bucket.period
        if level >= bucket.amount:
            left = level - bucket.amount
            return ChargeState(True, left, reset=(bucket.capacity - left) / rate)
        return ChargeState(False, level, reset=(bucket.capacity - level) / rate, wait=(bucket.amount - level) / rate)

    def _take(self, charge: Charge, now: float) -> None:
        if isinstance(charge, Bucket):
            self._put_bucket(charge, self._bucket_level(charge, now) - charge.amount, now)
        elif isinstance(charge, Budget):
            used, expires, epoch = self._budgets[charge.key]
            self._budgets[charge.key] = (used + charge.amount, expires, epoch)
        elif isinstance(charge, Lease):
            self._leases.setdefault(charge.key, {})[charge.member] = now + charge.ttl

    def _budget(self, key: str, now: float) -> tuple[int, str] | None:
        """A live budget counter's (used, generation)."""
        found = self._budgets.get(key)
        if found is None or found[1] <= now:
            return None
        return found[0], found[2]

    def _holders(self, key: str, now: float) -> dict[str, float]:
        holders = self._leases.get(key, {})
        for member in [m for m, expires in holders.items() if expires <= now]:
            del holders[member]
        return holders

    def _maybe_sweep(self, now: float) -> None:
        """Forget what has expired or refilled, so idle tenants cost no memory."""
        self._operations += 1
        if self._operations % _SWEEP_EVERY:
            return
        self._budgets = {k: v for k, v in self._budgets.items() if v[1] > now}
        self._leases = {k: h for k, h in self._leases.items() if self._holders(k, now)}
        self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}  # a full bucket = no entry
