"""The one interface every limit store implements, and the three kinds of counter it keeps.

A request's limits are checked as one all-or-nothing `acquire` over several charges: every
charge fits and all are taken, or none is taken. Afterwards `settle` corrects them to what the
request really used. The in-process store (`MemoryBackend`) and the Redis store
(`RedisBackend`) implement exactly this contract; `tests/limits/test_backends.py` runs the same
tests against both.

Example: one request of 40 estimated tokens against 3 requests/min and 1000 tokens/min::

    outcome = await backend.acquire([
        Bucket("rpm:proj_1:m", capacity=3, period=60, amount=1),
        Bucket("tpm:proj_1:m", capacity=1000, period=60, amount=40),
    ])
    outcome.allowed            # True: both taken (False: neither)
    outcome.states[0].level    # 2.0 requests left
    await backend.settle([Adjustment(Bucket("tpm:proj_1:m", 1000, 60, 40), amount=40 - 31)])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Union


class LimiterUnavailable(Exception):
    """The counters could not be read or written (store down or too slow): the caller must refuse."""


@dataclass(frozen=True)
class Bucket:
    """A token bucket holding up to `capacity`, refilled continuously to full over `period` seconds.

    Acquiring takes `amount`. Continuous refill means no window edge exists to burst across: in
    any stretch of `t` seconds at most ``capacity + capacity * t / period`` is ever taken.
    """

    key: str
    capacity: int
    period: float
    amount: int

    def __post_init__(self) -> None:
        assert self.capacity > 0, "a bucket needs a positive capacity (no limit means no bucket)"
        assert self.period > 0, "a bucket needs a positive refill period"


@dataclass(frozen=True)
class Budget:
    """A counter that may not pass `limit` (None: counted, never refused); acquiring adds `amount`.

    A budget counter starts absent: `acquire` reports it in `Outcome.missing`, the caller computes
    its starting value (usage so far in the period) and calls `seed`, then acquires again. A
    seeded counter lives `ttl` seconds.

    Each seeded counter is a new *generation* (`ChargeState.epoch`). A counter re-seeded while a
    request was running (the store lost its data, so the counter was rebuilt from the ledger)
    never held that request's reservation: its settle must add the whole cost there, not the
    difference from the estimate (`Adjustment.epoch`).
    """

    key: str
    limit: int | None
    amount: int
    ttl: float

    def __post_init__(self) -> None:
        assert self.amount >= 0, "a budget reservation cannot be negative"
        assert self.ttl > 0, "a budget counter needs a lifetime"


@dataclass(frozen=True)
class Lease:
    """One of at most `limit` concurrent holders of `key`, named `member`, forgotten after `ttl` s.

    The lifetime only matters when a holder dies without releasing (a crashed replica).
    """

    key: str
    limit: int
    member: str
    ttl: float

    def __post_init__(self) -> None:
        assert self.limit > 0, "a lease needs a positive limit (no limit means no lease)"
        assert self.ttl > 0, "a lease needs a lifetime"


Charge = Union[Bucket, Budget, Lease]


@dataclass(frozen=True)
class ChargeState:
    """One charge as `acquire` found (and, if allowed, left) it.

    `level`: a bucket's contents, a budget's used amount, a lease's holder count. `reset`: for a
    bucket, seconds until it is full again. `wait`: for a refused bucket, seconds until `amount`
    will be there. `epoch`: for a budget that exists, the generation of its counter (hand it to
    `settle` in the `Adjustment`).
    """

    allowed: bool
    level: float
    reset: float = 0.0
    wait: float = 0.0
    epoch: str = ""


@dataclass(frozen=True)
class Outcome:
    """What `acquire` decided. If not `allowed`, nothing was taken."""

    states: tuple[ChargeState, ...]
    missing: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.missing and all(state.allowed for state in self.states)


@dataclass(frozen=True)
class Adjustment:
    """A correction `settle` applies to a charge that was acquired.

    Bucket: `amount` is put back (capped at capacity; negative takes more). Lease: the member is
    released (`amount` unused). Budget: `epoch` is the generation `acquire` took `charge.amount`
    from; if the counter is still that generation, `amount` is added (negative gives back),
    else (re-seeded from the ledger since, without the reservation) the whole cost,
    `charge.amount + amount`, is. So a settle never gives back what the counter never held.
    """

    charge: Charge
    amount: int = 0
    epoch: str = ""

    def __post_init__(self) -> None:
        assert self.epoch or not isinstance(self.charge, Budget), "a budget is settled against the generation it was taken from"


class LimitBackend(Protocol):
    """Where the counters live. Every method raises `LimiterUnavailable` when the store fails."""

    async def acquire(self, charges: Sequence[Charge]) -> Outcome:
        """Take every charge, or none of them if any does not fit or a budget is missing."""
        ...

    async def seed(self, key: str, value: int, ttl: float) -> None:
        """Create the budget counter `key` at `value`, as a new generation, unless it exists already."""
        ...

    async def settle(self, adjustments: Sequence[Adjustment]) -> tuple[int | None, ...]:
        """Apply the corrections; returns each budget's new value (None: not a budget or gone)."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers right now (a startup check; requests never rely on it)."""
        ...

    async def close(self) -> None: ...


def refill(level: float, updated: float, now: float, capacity: int, period: float) -> float:
    """A bucket's contents at `now`, `updated` being when `level` was written."""
    if now <= updated:
        return level
    return min(float(capacity), level + (now - updated) * capacity / period)
