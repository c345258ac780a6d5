"""One request's account, for every endpoint that runs a model: reserve → work → settle, once.

    settlement = Settlement(charge, limiter=..., ledger=..., observer=...)
    await settlement.open(prompt_tokens=..., max_tokens=..., n=...)   # reserve limits, pending ledger row
    ... the engine or the embedder works ...
    await settlement.close("completed", prompt_tokens=..., completion_tokens=...)

`open` reserves against the limits the request's admission counted and writes the ledger row as
pending before any model work, so a crash cannot lose it. `close` acts on its first call only,
whatever calls it (the end of a stream, an error, a disconnect, a response that was never
iterated): it settles the limits (a limit store that fails does not cost the ledger row, which is
the record of truth), settles the ledger row (retried until durable, `ledger_writer.py`) and tells
the observer (metrics, access log). Both steps are shielded from the cancellation a disconnect
brings. `withdraw` is for work that never started (the engine refused it): the reservation goes
back and no row is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import anyio

from modelhost.auth import Principal
from modelhost.limits import Admission, Limiter, Reservation
from modelhost.observability import SettlementObserver, SettlementReport
from modelhost.pipeline.ledger_writer import LedgerWriter
from modelhost.store import UsageEntry
from modelhost.store.ledger import PENDING

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Charge:
    """Who pays for which request on which model."""

    principal: Principal
    model: str
    operation: str
    request_id: str
    admission: Admission  # the request as counted before it was planned (pipeline/admission.py)


@dataclass(frozen=True)
class Timing:
    """A generation's latencies, for the metrics (None when there was no text)."""

    time_to_first_token: float | None = None
    time_per_output_token: float | None = None


class Settlement:
    def __init__(
        self, charge: Charge, *, limiter: Limiter, ledger: LedgerWriter, observer: SettlementObserver | None = None
    ) -> None:
        self.charge = charge
        self._limiter = limiter
        self._ledger = ledger
        self._observer = observer
        self._reservation: Reservation | None = None
        self.closed = False
        self.recorded = False  # the ledger row is durable with its final usage

    @property
    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers as the limits stood when the request was reserved."""
        return dict(self._reservation.headers) if self._reservation is not None else {}

    @property
    def opened(self) -> bool:
        return self._reservation is not None

    async def open(self, *, prompt_tokens: int, max_tokens: int, n: int) -> None:
        """Reserve the request's tokens and write its pending row; on any failure, nothing is left held."""
        assert self._reservation is None, "a settlement opens once"
        with anyio.CancelScope(shield=True):  # what the limit store took must come back to us
            reservation = await self._limiter.reserve(
                self.charge.admission,
                request_id=self.charge.request_id,
                prompt_tokens=prompt_tokens,
                max_tokens=max_tokens,
                n=n,
            )
            try:  # the pending row (prompt tokens) exists before any model work: a crash cannot lose it
                await self._ledger.admit(self._entry(PENDING, prompt_tokens, 0))
            except BaseException:
                await self._limiter.release(reservation)
                raise
        self._reservation = reservation

    def track(self, completion_tokens: Callable[[], int]) -> None:
        """Checkpoint the running work's `completion_tokens()` into its pending row on each heartbeat."""
        self._ledger.track(self.charge.request_id, completion_tokens)

    async def withdraw(self) -> None:
        """The work never started: give the reservation back and drop the pending row."""
        if self.closed or self._reservation is None:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            await self._ledger.discard(self.charge.request_id)
            await self._limiter.release(self._reservation)

    async def close(self, outcome: str, *, prompt_tokens: int, completion_tokens: int, timing: Timing = Timing()) -> bool:
        """Settle limits, ledger and observer for `outcome`; only the first call acts. Returns `recorded`."""
        if self.closed or self._reservation is None:
            return self.recorded
        self.closed = True
        entry = self._entry(outcome, prompt_tokens, completion_tokens)
        # Shielded: a disconnect cancels the request's task, but its usage must still be written.
        with anyio.CancelScope(shield=True):
            try:
                await self._limiter.settle(self._reservation, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            except Exception:
                # The ledger row below is the record of truth (counters are rebuilt from it);
                # a limit store that failed to settle must not cost us that row.
                logger.exception("could not settle the limits of %s", entry.request_id)
            # Retried until durable (or kept for the background to write): a stream's [DONE] waits on this.
            self.recorded = await self._ledger.settle(entry)
        self._observe(outcome, prompt_tokens, completion_tokens, timing)
        return self.recorded

    def _observe(self, outcome: str, prompt_tokens: int, completion_tokens: int, timing: Timing) -> None:
        """Metrics and the access log, after the account is settled: a failing observer costs no row."""
        if self._observer is None:
            return
        try:
            self._observer.settled(
                SettlementReport(
                    model=self.charge.model,
                    operation=self.charge.operation,
                    outcome=outcome,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    time_to_first_token=timing.time_to_first_token,
                    time_per_output_token=timing.time_per_output_token,
                )
            )
        except Exception:
            logger.exception("the observer failed on %s", self.charge.request_id)

    def _entry(self, outcome: str, prompt_tokens: int, completion_tokens: int) -> UsageEntry:
        who = self.charge.principal
        return UsageEntry(
            request_id=self.charge.request_id,
            created_at=datetime.now(timezone.utc),
            organization_id=who.organization_id,
            project_id=who.project_id,
            user_id=who.user_id,
            api_key_id=who.key_id,
            model=self.charge.model,
            operation=self.charge.operation,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            outcome=outcome,
            batch=who.is_batch,  # the pending row and the final one alike: the Usage API's `batch`
        )
