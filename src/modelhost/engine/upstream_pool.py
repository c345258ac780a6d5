"""Replicas of one upstream model: least-outstanding-requests choice and a circuit breaker each.

``pool.choose(exclude) -> Replica | None`` picks, among the replicas whose circuit lets a request
through, the one with the fewest requests in flight (ties rotate). A replica's circuit opens after
`failure_threshold` consecutive failures (connect errors, 5xx, broken streams) or a failed health
check; while open it gets no requests; after `cooldown` one trial request goes through
(half-open), and its success closes the circuit again. A passing health check closes it at once.

Replicas are named by position ("replica 2") in logs and state: their URLs are never shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class CircuitBreaker:
    """``allows()`` before sending; then ``succeeded()`` or ``failed()``; ``trip()``/``reset()`` from health checks."""

    threshold: int
    cooldown: float
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    trial_running: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return CLOSED
        return HALF_OPEN if self.clock() - self.opened_at >= self.cooldown else OPEN

    def allows(self) -> bool:
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and not self.trial_running)

    def begin(self) -> None:
        """A request is sent now; in half-open state it is the one trial."""
        if self.state == HALF_OPEN:
            self.trial_running = True

    def settled(self) -> None:
        """The request sent after `begin()` is over, whatever became of it (a cancelled trial frees the slot)."""
        self.trial_running = False

    def succeeded(self) -> None:
        self.failures, self.opened_at, self.trial_running = 0, None, False

    def failed(self) -> None:
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.threshold:
            self.trip()

    def trip(self) -> None:
        self.opened_at, self.trial_running = self.clock(), False

    def reset(self) -> None:
        self.succeeded()

    def seconds_until_trial(self) -> float:
        return 0.0 if self.opened_at is None else max(0.0, self.cooldown - (self.clock() - self.opened_at))


@dataclass
class Replica:
    index: int
    url: str  # base URL up to /v1; never logged or shown
    breaker: CircuitBreaker
    outstanding: int = 0
    picks: int = 0

    @property
    def label(self) -> str:
        return f"replica {self.index + 1}"


@dataclass
class UpstreamPool:
    """The replicas of one model; see the module docstring."""

    replicas: list[Replica] = field(default_factory=list)
    _turn: int = 0

    @classmethod
    def of(cls, urls: list[str], *, failure_threshold: int, cooldown: float) -> UpstreamPool:
        assert urls, "an upstream pool needs at least one replica"
        return cls([Replica(i, url, CircuitBreaker(failure_threshold, cooldown)) for i, url in enumerate(urls)])

    def choose(self, exclude: set[int]) -> Replica | None:
        candidates = [r for r in self.replicas if r.index not in exclude and r.breaker.allows()]
        if not candidates:
            return None
        self._turn += 1
        size = len(self.replicas)
        # Fewest in flight first; among equals, rotate so idle replicas share the work.
        best = min(candidates, key=lambda r: (r.outstanding, (r.index - self._turn) % size))
        best.breaker.begin()
        best.picks += 1
        return best

    @property
    def outstanding(self) -> int:
        return sum(r.outstanding for r in self.replicas)

    def retry_after(self) -> int:
        """Whole seconds until some replica takes a trial request again (at least 1)."""
        waits = [r.breaker.seconds_until_trial() for r in self.replicas]
        return max(1, int(min(waits) + 0.999)) if waits else 1

    def state(self) -> list[dict[str, object]]:
        return [
            {"replica": r.index + 1, "circuit": r.breaker.state, "outstanding": r.outstanding, "requests": r.picks}
            for r in self.replicas
        ]
