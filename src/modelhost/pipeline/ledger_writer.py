"""Ledger writes that neither a transient database error nor a crash can lose (docs/security.md).

`LedgerWriter` sits between the pipelines and `UsageLedger`:

- `admit` writes a request's ``pending`` row (its prompt tokens) right after its limits are
  reserved and before the engine sees it. A database that cannot take the row within
  `ADMIT_WAIT_SECONDS` is a 503 ``ledger_unavailable``: nothing runs unrecorded.
- `settle` writes the final usage onto that row, retrying with exponential backoff (50 ms doubling
  to 2 s) for up to `settle_wait` seconds, and says whether the row is durable: a stream sends its
  usage chunk and ``[DONE]`` only then. A write still failing after that is kept in memory and
  retried on every heartbeat until it lands; one still waiting at shutdown is spooled to a file in
  `spool_dir` and retried by the next process that starts there.
- `run` (a background task) beats this replica's heartbeat every `heartbeat` seconds, checkpoints
  the completion tokens of the requests it is generating, sweeps the pending rows of replicas
  whose heartbeat is older than ``STALE_HEARTBEATS * heartbeat`` (they died: their rows become
  ``interrupted``), and retries the backlog.

Every write is idempotent (`UsageLedger.settle` touches only unsettled rows), so a retry of a write
whose commit landed but whose answer was lost changes nothing: a request id has one row, once.
Measured on the 2-core development machine with SQLite: admit + settle cost 2 × ~1 ms of a worker
thread per request, where the single insert cost ~1 ms (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio

from modelhost.errors import ServiceUnavailable
from modelhost.store import UsageEntry, UsageLedger

logger = logging.getLogger(__name__)

T = TypeVar("T")

ADMIT_WAIT_SECONDS = 2.0  # how long a request waits for its pending row before a 503
FIRST_BACKOFF_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 2.0
STALE_HEARTBEATS = 3  # a replica silent for this many heartbeats is presumed dead
SPOOL_SUFFIX = ".jsonl"


def new_replica_id() -> str:
    """This process, as operators can find it: host, pid and a random part (a pid can be reused)."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class _Deferred:
    """A write that failed for longer than a request waits; retried until it lands."""

    request_id: str
    settle: UsageEntry | None  # the final row to write, or None: delete the pending row


class LedgerUnavailable(ServiceUnavailable):
    """The usage ledger cannot record a request now, so it is not run; retry shortly."""

    code = "ledger_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The server cannot record usage right now, so the request was not run; retry shortly.",
            headers={"Retry-After": "1"},
        )


class LedgerWriter:
    """``await writer.start()``; per request ``admit`` → ``track`` → ``settle``; ``await writer.close()``."""

    def __init__(
        self,
        ledger: UsageLedger,
        *,
        heartbeat: float = 10.0,
        settle_wait: float = 10.0,
        max_request_seconds: float = 3600.0,
        spool_dir: Path | None = None,
        replica_id: str | None = None,
    ) -> None:
        assert heartbeat > 0 and settle_wait >= 0, "heartbeat is positive, settle_wait not negative"
        self.ledger = ledger
        self.replica_id = replica_id or new_replica_id()
        self._heartbeat = heartbeat
        self._settle_wait = settle_wait
        self._max_request = max_request_seconds
        self._spool_dir = spool_dir
        self._backlog: dict[str, _Deferred] = {}
        self._adopted: list[Path] = []  # spool files whose writes are in the backlog
        self._running: dict[str, Callable[[], int]] = {}  # request id → its completion tokens so far
        self._checkpointed: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Writes waiting for the database."""
        return len(self._backlog)

    async def start(self) -> None:
        """Register this replica, take over spooled writes, and start the background loop."""
        self._adopt_spool()
        await self.tick()
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        """Stop the loop, try the backlog once more, spool what is left, and retire this replica."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with anyio.CancelScope(shield=True):
            await self._flush(within=min(self._settle_wait, 5.0))
            self._spool()
            await self._attempt(partial(self.ledger.retire, self.replica_id), within=2.0, what="the replica's retirement")

    async def admit(self, entry: UsageEntry) -> None:
        """Write `entry` (outcome pending) before the request runs; `LedgerUnavailable` if the database cannot."""
        ok, _ = await self._attempt(
            partial(self.ledger.admit, entry, replica_id=self.replica_id),
            within=ADMIT_WAIT_SECONDS,
            what=f"the pending row of {entry.request_id}",
        )
        if not ok:
            # An attempt abandoned mid-commit may still land: take that row back once the database answers.
            self._defer(_Deferred(entry.request_id, None))
            raise LedgerUnavailable()

    def track(self, request_id: str, completion_tokens: Callable[[], int]) -> None:
        """Checkpoint `completion_tokens()` of this running request on each heartbeat, until it settles."""
        self._running[request_id] = completion_tokens

    async def discard(self, request_id: str) -> None:
        """The request was admitted but never ran: its pending row goes (now, or when the database is back)."""
        self._forget(request_id)
        ok, _ = await self._attempt(
            partial(self.ledger.discard, request_id), within=ADMIT_WAIT_SECONDS, what=f"the pending row of {request_id}"
        )
        if not ok:
            self._defer(_Deferred(request_id, None))

    async def settle(self, entry: UsageEntry) -> bool:
        """Write the final row; True once it is durable, False if it waits for the database (it is kept)."""
        self._forget(entry.request_id)
        ok, _ = await self._attempt(
            partial(self.ledger.settle, entry), within=self._settle_wait, what=f"the usage of {entry.request_id}"
        )
        if not ok:
            logger.error(
                "usage of %s (org %s, %d+%d tokens) waits for the database; retrying every %g s",
                entry.request_id,
                entry.organization_id,
                entry.prompt_tokens,
                entry.completion_tokens,
                self._heartbeat,
            )
            self._defer(_Deferred(entry.request_id, entry))
        return ok

    async def tick(self) -> None:
        """One heartbeat: say this replica lives, checkpoint progress, sweep dead replicas' rows, retry the backlog."""
        now = datetime.now(timezone.utc)
        alive, _ = await self._attempt(partial(self.ledger.heartbeat, self.replica_id, now), within=0, what="the heartbeat")
        progress = {rid: count() for rid, count in self._running.items()}
        changed = {rid: n for rid, n in progress.items() if self._checkpointed.get(rid) != n}
        if changed:
            done, _ = await self._attempt(partial(self.ledger.progress, changed), within=0, what="the progress checkpoint")
            if done:
                self._checkpointed.update(changed)
        if alive:
            # Only a replica whose own heartbeat landed judges others: its clock and database agree now.
            stale = now - timedelta(seconds=STALE_HEARTBEATS * self._heartbeat)
            oldest = now - timedelta(seconds=self._max_request)
            sweep = partial(self.ledger.sweep, replica_id=self.replica_id, stale_before=stale, admitted_before=oldest)
            swept, ids = await self._attempt(sweep, within=0, what="the sweep of dead replicas' rows")
            if swept and ids:
                logger.warning("settled %d pending ledger rows of stopped replicas as interrupted: %s", len(ids), ", ".join(ids[:20]))
        await self._flush(within=0)

    async def _loop(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat)
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one tick
                logger.exception("ledger heartbeat failed")

    async def _attempt(self, write: Callable[[], T], *, within: float, what: str) -> tuple[bool, T | None]:
        """Run `write` on a worker thread, retrying with backoff for `within` seconds; (landed, its result)."""
        deadline = time.monotonic() + within
        delay = FIRST_BACKOFF_SECONDS
        while True:
            left = deadline - time.monotonic()
            try:
                # A hung connection must not hold a request past its wait: the thread is abandoned
                # (its write is idempotent, so landing late does no harm).
                with anyio.fail_after(max(left, 0) + 5.0):
                    return True, await anyio.to_thread.run_sync(write, abandon_on_cancel=True)
            except Exception as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("could not write %s: %s", what, _brief(exc))
                    return False, None
                logger.warning("could not write %s (%s); retrying in %.2f s", what, _brief(exc), min(delay, left))
                await anyio.sleep(min(delay, left))
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _forget(self, request_id: str) -> None:
        self._running.pop(request_id, None)
        self._checkpointed.pop(request_id, None)

    def _defer(self, write: _Deferred) -> None:
        self._backlog[write.request_id] = write

    async def _flush(self, *, within: float) -> None:
        for write in list(self._backlog.values()):
            action = (
                partial(self.ledger.settle, write.settle)
                if write.settle is not None
                else partial(self.ledger.discard, write.request_id)
            )
            ok, _ = await self._attempt(action, within=within, what=f"the deferred usage of {write.request_id}")
            if not ok:
                return  # the database is still away; the next heartbeat tries again
            if self._backlog.get(write.request_id) is write:
                del self._backlog[write.request_id]
            if write.settle is not None:
                logger.warning("usage of %s recorded after the database came back", write.request_id)
        if not self._backlog:
            for path in self._adopted:
                path.unlink(missing_ok=True)
            self._adopted.clear()

    def _spool(self) -> None:
        """Write the backlog to this replica's spool file (atomically), for the next start to retry."""
        if not self._backlog or self._spool_dir is None:
            return
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        path = self._spool_dir / f"{self.replica_id}{SPOOL_SUFFIX}"
        partial_path = path.with_suffix(".partial")
        with open(partial_path, "w", encoding="utf-8") as out:
            for write in self._backlog.values():
                out.write(json.dumps(_encode(write)) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial_path, path)
        for adopted in self._adopted:  # their writes are in the new file
            adopted.unlink(missing_ok=True)
        logger.error("%d usage writes could not reach the database; spooled to %s for the next start", len(self._backlog), path)

    def _adopt_spool(self) -> None:
        """Take over the spool files left by stopped processes (renamed first, so only one process takes each)."""
        if self._spool_dir is None or not self._spool_dir.is_dir():
            return
        for i, path in enumerate(sorted(self._spool_dir.glob(f"*{SPOOL_SUFFIX}"))):
            claimed = self._spool_dir / f"{self.replica_id}-adopted-{i}{SPOOL_SUFFIX}"
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another process took it
            for line in claimed.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._defer(_decode(json.loads(line)))
            self._adopted.append(claimed)
        if self._backlog:
            logger.warning("retrying %d usage writes spooled by a stopped process", len(self._backlog))


def _encode(write: _Deferred) -> dict[str, object]:
    if write.settle is None:
        return {"discard": write.request_id}
    return {"settle": {**write.settle.__dict__, "created_at": write.settle.created_at.isoformat()}}


def _decode(data: dict[str, object]) -> _Deferred:
    if "discard" in data:
        return _Deferred(str(data["discard"]), None)
    fields = dict(data["settle"])  # type: ignore[call-overload]
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    entry = UsageEntry(**fields)
    return _Deferred(entry.request_id, entry)


def _brief(exc: BaseException) -> str:
    """An exception in one line without SQL or parameters (they carry ids, never secrets, but are long)."""
    text = str(getattr(exc, "orig", None) or exc).splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
