"""The batch runner: one per replica, started in the app's lifespan, claiming batch work through the database.

Every `poll_seconds` (or at once when a batch is created here) it reads the unfinished batches and,
for each one nothing of this replica is already busy with, starts what the batch needs:

- ``validating``: take the batch's lease, read the input file line by line and check it against the
  batch (`lines.LineChecks`, the model exists and the project may use it), count its input tokens
  (`enqueued.py`) against the enqueued-token limit → ``in_progress`` with `request_total` and
  `enqueued_tokens`, or ``failed`` with ``errors.data[]`` (naming lines). The limit's sum and the
  transition are one transaction holding the organization's row (`store.locks`), so batches of one
  organization validated at once, on any number of replicas, never pass the limit together;
- ``in_progress`` with lines nobody runs: a worker that reads the file again and claims, line by line,
  those without a row (or whose replica's lease lapsed), at most `per_batch` at once for this batch
  and `per_organization` for its organization on this replica. Each claimed line is sent through the
  app itself (`dispatch.py`) as the batch's `Principal`; its answer, the batch's counters and usage
  are written in one transaction as it finishes (`store.batches.finish_line`). A transient refusal
  (503: the engine's queue is full or the server drains; 429: a rate limit) is no answer: the line
  is tried again after a growing pause while the window lasts;
- every line done, the window passed (`expires_at`), or ``cancelling``, once no live replica runs a
  line of it: take the lease and finalize — unfinished lines get a ``batch_expired`` error row when the
  batch expired, the output and error files are written from the rows in line order, then
  ``completed``, ``expired`` or ``cancelled``. A replica that dies while finalizing leaves its lease to
  lapse; the next one resumes (the file ids already written are kept, so none is written twice).

A batch runs as the key that created it: each line's claim (and each worker's start) reads, in its
transaction, that the batch's project is still active and its key still in force — not revoked,
deleted or expired, its owner still allowed the project, by the authenticator's own rules
(`auth.authenticator.key_in_force`, uncached). If not, the batch goes ``cancelling`` and then
``cancelled``, keeping the lines that ran, as a request with that key would now be refused.

Leases (`lease_seconds`) of claimed lines and held batches are renewed every third of that while
this replica works; on a clean stop they are released at once, after kill -9 they lapse and another
replica (or this one restarted) takes the lines over. Time comes from `clock`, so tests can move it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import anyio
from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth.authenticator import key_in_force
from modelhost.auth.principal import Principal
from modelhost.batches import objects
from modelhost.batches.answers import EXPIRED_ERROR, output_line, refusal, transient, unstored_file_error, usage_of
from modelhost.blobs import BlobMissing
from modelhost.batches.dispatch import ASGIApp, Answer, dispatch
from modelhost.batches.files import BatchFiles
from modelhost.batches.lines import InputLine, LineChecks, parse_line
from modelhost.batches.enqueued import EnqueuedTokens
from modelhost.files.batch_input import LineTooLong, numbered_lines
from modelhost.engine.registry import CHAT, COMPLETIONS, EMBEDDINGS, ModelRegistry, ServedModel
from modelhost.limits import EnqueuedTokenLimitExceeded, Limiter
from modelhost.limits.limiter import EnqueueLimits
from modelhost.errors import APIError
from modelhost.ids import new_id
from modelhost.protocol.batches import BatchError
from modelhost.store import batches as store
from modelhost.store import locks
from modelhost.store.schema import Project
from modelhost.store.tenancy import as_utc

logger = logging.getLogger(__name__)
T = TypeVar("T")
Clock = Callable[[], datetime]
CAPABILITY = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETIONS, "/v1/embeddings": EMBEDDINGS, "/v1/responses": CHAT}
PAGE = 200  # rows read per query when writing the output files
UNREADABLE_PAUSE = 60.0  # seconds before a worker tries again an input file it could not read
RETRY_FIRST_PAUSE, RETRY_MAX_PAUSE = 1.0, 30.0  # seconds between tries of a line refused for now (429, 503)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class RunnerSettings:
    poll_seconds: float = 1.0
    lease_seconds: float = 30.0
    per_batch: int = 4
    per_organization: int = 8
    max_line_bytes: int = 8 << 20
    max_lines: int = 50_000
    max_errors: int = 100


@dataclass(frozen=True)
class _Snapshot:
    """What a poll round knows of a batch."""

    id: str
    status: str
    organization_id: str
    expires_at: datetime
    total: int
    done: int
    running: int


class BatchRunner:
    """Claims and runs batch work for one replica (`replica_id`); `start()` in the lifespan, `stop()` at its end."""

    def __init__(
        self,
        *,
        app: ASGIApp,
        sessions: sessionmaker[Session],
        files: BatchFiles,
        registry: Callable[[], ModelRegistry],
        replica_id: str,
        settings: RunnerSettings = RunnerSettings(),
        clock: Clock = utcnow,
        limiter: Limiter | None = None,
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.files = files
        self.registry = registry
        self.replica_id = replica_id
        self.settings = settings
        self.clock = clock
        self.limiter = limiter  # the enqueued-token limit is checked at validation (None: no limits)
        self._busy: dict[str, asyncio.Task[None]] = {}  # batch id → the worker or step of ours on it
        self._status: dict[str, str] = {}  # batch id → status as the last poll saw it (workers stop on a change)
        self._organizations: dict[str, asyncio.Semaphore] = {}
        self._enqueueing = asyncio.Lock()  # one enqueued-token check and its batch's transition at a time
        self._resting: dict[str, float] = {}  # batch id → monotonic time before which no worker starts (unreadable input)
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loops = [asyncio.create_task(self._poll_forever()), asyncio.create_task(self._renew_forever())]

    async def stop(self) -> None:
        """Stop claiming, cancel what runs (its engine work is settled by the pipeline), release our leases."""
        tasks = [*self._loops, *self._busy.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._db(self._release_all)
        except Exception:
            logger.warning("could not release this replica's batch leases; they lapse in %gs", self.settings.lease_seconds)

    def wake(self) -> None:
        """Look for work now (a batch was created or cancelled here)."""
        self._wake.set()

    async def idle(self) -> None:
        """Wait until nothing of this replica is busy (tests)."""
        while self._busy:
            await asyncio.gather(*list(self._busy.values()), return_exceptions=True)

    # -- the poll --------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:
                logger.warning("batch runner: polling for work failed; will retry", exc_info=True)
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def poll(self) -> None:
        """One round: start what each unfinished batch needs and nothing here does yet."""
        now = self.clock()
        batches = await self._db(self._snapshots, now)
        seen = {batch.id for batch in batches}
        for gone in [batch_id for batch_id in self._status if batch_id not in seen and batch_id not in self._busy]:
            self._status.pop(gone, None)  # ended (or out of this round's page): forgotten
            self._resting.pop(gone, None)
        for batch in batches:
            self._status[batch.id] = batch.status
            if batch.id in self._busy:
                continue
            if batch.status == store.VALIDATING:
                self._start(batch.id, self._validate(batch.id))
            elif batch.status == store.IN_PROGRESS:
                if batch.done >= batch.total or now >= batch.expires_at:
                    if batch.running == 0:
                        self._start(batch.id, self._finalize(batch.id))
                elif batch.total - batch.done - batch.running > 0 and self._resting.get(batch.id, 0.0) <= time.monotonic():
                    self._start(batch.id, self._work(batch.id))
            elif batch.running == 0:  # cancelling, or finalizing by a replica whose lease may have lapsed
                self._start(batch.id, self._finalize(batch.id))

    def _snapshots(self, session: Session, now: datetime) -> list[_Snapshot]:
        return [
            _Snapshot(
                row.id, row.status, row.organization_id, as_utc(row.expires_at) or now, row.request_total,
                row.request_completed + row.request_failed, store.running_lines(session, row.id, now=now),
            )
            for row in store.candidates(session, limit=100)
        ]

    def _start(self, batch_id: str, work: Any) -> None:
        task = asyncio.create_task(work)
        self._busy[batch_id] = task

        def done(task: asyncio.Task[None]) -> None:
            self._busy.pop(batch_id, None)
            if not task.cancelled() and task.exception() is not None:
                logger.warning("batch %s: work failed; it is retried at the next poll", batch_id, exc_info=task.exception())

        task.add_done_callback(done)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            if self._busy:
                try:
                    await self._db(self._renew, list(self._busy))
                except Exception:
                    logger.warning("batch runner: could not renew leases; will retry", exc_info=True)

    def _renew(self, session: Session, batch_ids: list[str]) -> None:
        store.renew(session, self.replica_id, batch_ids, until=self._lease_end())

    def _release_all(self, session: Session) -> None:
        store.release_lines(session, self.replica_id, now=self.clock())
        store.release_batches(session, self.replica_id)

    # -- validating → in_progress or failed ------------------------------------------------------

    async def _validate(self, batch_id: str) -> None:
        claimed = await self._db(self._claim, batch_id, (store.VALIDATING,))
        if claimed is None:
            return
        row, who = claimed
        try:
            checks = LineChecks(row.endpoint, max_lines=self.settings.max_lines, max_errors=self.settings.max_errors)
            try:
                async for number, raw in numbered_lines(self.files.content(who, row.input_file_id), max_line_bytes=self.settings.max_line_bytes):
                    checks.add(parse_line(number, raw))
            except LineTooLong as exc:
                checks.fail(BatchError(code="line_too_long", message=f"This line is longer than {self.settings.max_line_bytes} bytes.", line=exc.number))
            except APIError as exc:  # the file is gone
                checks.fail(BatchError(code="invalid_file", message=exc.message, param="input_file_id"))
            if checks.total == 0 and not checks.errors:
                checks.fail(BatchError(code="empty_file", message="The batch input file is empty."))
            served = None
            if checks.model is not None and not checks.errors:
                try:
                    served = self.registry().get(checks.model, CAPABILITY[row.endpoint], caller=who)
                except APIError as exc:
                    code = exc.code or "invalid_model"
                    checks.fail(BatchError(code=code, message=exc.message, param="body.model", line=checks.model_line))
            tokens = 0
            if served is not None and not checks.errors:
                tokens = await self._enqueued_tokens(row, who, served)
            limits = None
            if self.limiter is not None and served is not None and not checks.errors:
                limits = await self.limiter.batch_enqueue_limits(who, model=served.id)  # LimitsUnavailable: a later poll
            model = served.id if served is not None else checks.model  # the canonical id, as the limit sums it
            async with self._enqueueing:  # one at a time here; the organization's row lock orders replicas
                await self._db(self._end_validation, batch_id, who, checks, model, tokens, limits)
        finally:
            await self._shielded(self._db(store.release_batch, batch_id, self.replica_id))
        self.wake()

    def _end_validation(
        self, session: Session, batch_id: str, who: Principal, checks: LineChecks, model: str | None, tokens: int,
        limits: EnqueueLimits | None,
    ) -> None:
        """``in_progress`` with the batch's enqueued tokens, or ``failed`` with its errors. The enqueued-token
        check and the row it counts this batch in are one transaction that first locks the organization's
        row: batches of one organization validated at once (here or on other replicas) each saw the
        others' 0 and all passed."""
        now = self.clock()
        if limits and model is not None and not checks.errors:
            locks.lock_organization(session, who.organization_id)
            try:
                limits.check(session, who, model=model, tokens=tokens, batch_id=batch_id)
            except EnqueuedTokenLimitExceeded as exc:
                checks.fail(BatchError(code="token_limit_exceeded", message=exc.message))
        if checks.errors:
            errors = {"object": "list", "data": [e.model_dump() for e in checks.errors]}
            store.transition(session, batch_id, from_=(store.VALIDATING,), status=store.FAILED, failed_at=now, errors=errors)
        else:
            store.transition(
                session, batch_id, from_=(store.VALIDATING,), status=store.IN_PROGRESS, in_progress_at=now,
                request_total=checks.total, model=model, enqueued_tokens=tokens,
            )

    async def _enqueued_tokens(self, row: store.BatchRow, who: Principal, served: ServedModel) -> int:
        """The input tokens of all the batch's lines (the file read a second time, now that it is known valid)."""
        counter = EnqueuedTokens(row.endpoint, served)
        async for number, raw in numbered_lines(self.files.content(who, row.input_file_id), max_line_bytes=self.settings.max_line_bytes):
            line = parse_line(number, raw)
            if isinstance(line, InputLine):
                await counter.add(line.body)
        await counter.flush()
        return counter.total

    # -- in_progress: running lines --------------------------------------------------------------

    async def _work(self, batch_id: str) -> None:
        try:
            await self._run_lines(batch_id)
        except (APIError, BlobMissing) as exc:  # the input file was deleted under the batch
            logger.warning("batch %s: its input file cannot be read (%s); trying again in %gs", batch_id, exc, UNREADABLE_PAUSE)
            self._resting[batch_id] = time.monotonic() + UNREADABLE_PAUSE

    async def _run_lines(self, batch_id: str) -> None:
        work = await self._db(self._for_work, batch_id)
        if work is None:
            self.wake()
            return
        row, who, finished = work
        expires_at = as_utc(row.expires_at)
        assert expires_at is not None
        per_batch = asyncio.Semaphore(self.settings.per_batch)
        per_org = self._organizations.setdefault(row.organization_id, asyncio.Semaphore(self.settings.per_organization))
        async with anyio.create_task_group() as lines:
            async for number, raw in numbered_lines(self.files.content(who, row.input_file_id), max_line_bytes=self.settings.max_line_bytes):
                if number in finished:
                    continue
                if self._status.get(batch_id, store.IN_PROGRESS) != store.IN_PROGRESS or self.clock() >= expires_at:
                    break
                line = parse_line(number, raw)
                if not isinstance(line, InputLine):
                    continue  # validated already; the file cannot have changed (files are written once)
                await per_batch.acquire()
                await per_org.acquire()
                try:
                    claimed = await self._db(self._claim_line, batch_id, expires_at, line)
                except BaseException:
                    per_batch.release()
                    per_org.release()
                    raise
                if not claimed:  # another replica runs or ran it, or the batch stopped
                    per_batch.release()
                    per_org.release()
                    if claimed is None:
                        break
                    continue
                lines.start_soon(self._run_line, row.endpoint, batch_id, expires_at, line, who, per_batch, per_org)
        self.wake()

    def _claim_line(self, session: Session, batch_id: str, expires_at: datetime, line: InputLine) -> bool | None:
        """Claim `line` for this replica: False if another has it, None if the batch takes no more lines
        (cancelled, or its window passed; read in the claim's transaction, not from the last poll)."""
        now = self.clock()
        row = store.get(session, batch_id)
        if row is None or row.status != store.IN_PROGRESS or now >= expires_at or not self._may_run(session, row):
            if row is not None:
                self._status[batch_id] = row.status
            return None
        return store.claim_line(session, batch_id, line.number, line.custom_id, self.replica_id, now=now, until=self._lease_end())

    def _may_run(self, session: Session, row: store.BatchRow) -> bool:
        """Whether the batch may still run requests: its project active and the key it was created with
        still in force (`key_in_force`: the authenticator's own rules, uncached). Else it is cancelled here."""
        project = session.get(Project, row.project_id)
        if project is not None and project.status == "active" and self._key_in_force(session, row):
            return True
        store.transition(session, row.id, from_=(store.IN_PROGRESS,), status=store.CANCELLING, cancelling_at=self.clock())
        return False

    @staticmethod
    def _key_in_force(session: Session, row: store.BatchRow) -> bool:
        # A batch written without a key (never through the API) has none to revoke: its project decides.
        return row.api_key_id is None or key_in_force(session, row.api_key_id, row.organization_id, row.project_id)

    def _for_work(self, session: Session, batch_id: str) -> tuple[store.BatchRow, Principal, set[int]] | None:
        """The batch, who its lines run as and the lines already done; None if its project was archived
        or its key revoked since (no request of theirs runs: the batch is cancelled, keeping what ran)."""
        row = store.get(session, batch_id)
        assert row is not None
        if not self._may_run(session, row):
            return None
        session.expunge(row)
        return row, objects.principal_of(session, row), store.finished_lines(session, batch_id)

    async def _run_line(
        self,
        endpoint: str,
        batch_id: str,
        expires_at: datetime,
        line: InputLine,
        who: Principal,
        per_batch: asyncio.Semaphore,
        per_org: asyncio.Semaphore,
    ) -> None:
        try:
            answer = refusal(line, endpoint) or await self._answer(endpoint, expires_at, line, who)
            succeeded = answer.status == 200
            input_tokens, cached, output_tokens = usage_of(answer.body) if succeeded else (0, 0, 0)
            try:
                body = answer.body.decode()
                json.loads(body)
            except ValueError:
                body = json.dumps(answer.body.decode(errors="replace"))
            result = store.LineResult(
                outcome=store.SUCCEEDED if succeeded else store.LINE_FAILED,
                record_id=new_id("batch_req_"),
                status_code=answer.status,
                request_id=answer.request_id,
                body=body,
                input_tokens=input_tokens,
                cached_tokens=cached,
                output_tokens=output_tokens,
            )
            written = await self._shielded(
                self._db(lambda s: store.finish_line(s, batch_id, line.number, self.replica_id, result, now=self.clock()))
            )
            if not written:
                logger.warning("batch %s line %d: another replica took it over; this answer is dropped", batch_id, line.number)
        finally:
            per_batch.release()
            per_org.release()

    async def _answer(self, endpoint: str, expires_at: datetime, line: InputLine, who: Principal) -> Answer:
        """The line's answer; a transient refusal (the engine's queue full, a rate limit, the server
        draining) is tried again after a growing pause while the window lasts, as it is no answer to the line."""
        body = json.dumps(line.body).encode()
        pause = RETRY_FIRST_PAUSE
        while True:
            answer = await dispatch(self.app, endpoint, body, who)
            if not transient(answer) or self.clock() + timedelta(seconds=pause) >= expires_at:
                return answer
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_PAUSE)

    # -- finalizing → completed, expired or cancelled --------------------------------------------

    async def _finalize(self, batch_id: str) -> None:
        claimed = await self._db(self._claim, batch_id, (store.IN_PROGRESS, store.CANCELLING, store.FINALIZING))
        if claimed is None:
            return
        row, who = claimed
        try:
            now = self.clock()
            if await self._db(lambda s: store.running_lines(s, batch_id, now=now)) > 0:
                return  # a live replica still runs lines of it: later
            expires_at = as_utc(row.expires_at)
            assert expires_at is not None
            done = row.request_completed + row.request_failed
            if row.status == store.IN_PROGRESS and done >= row.request_total:
                await self._db(lambda s: store.transition(s, batch_id, from_=(store.IN_PROGRESS,), status=store.FINALIZING, finalizing_at=now))
                end = store.COMPLETED
            elif row.status == store.IN_PROGRESS and now >= expires_at:
                await self._expire_unfinished(row, who)
                end = store.EXPIRED
            elif row.status == store.CANCELLING:
                end = store.CANCELLED
            elif row.status == store.FINALIZING:
                end = store.COMPLETED
            else:
                return
            refused = await self._write_files(row, who)
            ending: dict[str, Any] = {}
            if refused is not None:  # the project's storage is full: the batch fails, saying what was not kept
                end = store.FAILED
                ending["errors"] = {"object": "list", "data": [refused.model_dump()]}
            stamp = {store.COMPLETED: "completed_at", store.EXPIRED: "expired_at", store.CANCELLED: "cancelled_at", store.FAILED: "failed_at"}[end]
            ending[stamp] = self.clock()
            if await self._db(lambda s: store.transition(s, batch_id, from_=(row.status, store.FINALIZING), status=end, **ending)):
                # Ended for good: its answers live in its files now, not twice (a failure here leaves rows no one reads).
                await self._db(store.forget_lines, batch_id)
        finally:
            await self._shielded(self._db(store.release_batch, batch_id, self.replica_id))

    async def _expire_unfinished(self, row: store.BatchRow, who: Principal) -> None:
        finished = await self._db(lambda s: store.finished_lines(s, row.id))
        try:
            async for number, raw in numbered_lines(self.files.content(who, row.input_file_id), max_line_bytes=self.settings.max_line_bytes):
                if number in finished:
                    continue
                line = parse_line(number, raw)
                if isinstance(line, InputLine):
                    record_id = new_id("batch_req_")
                    await self._db(lambda s: store.expire_line(s, row.id, number, line.custom_id, record_id, EXPIRED_ERROR, now=self.clock()))
        except (APIError, BlobMissing) as exc:  # deleted under the batch: its lines not run cannot be named
            logger.warning("batch %s: its input file cannot be read (%s); it expires without its unrun lines' errors", row.id, exc)

    async def _write_files(self, row: store.BatchRow, who: Principal) -> BatchError | None:
        """Write the output and error files from the line rows; a file the Files API refuses (past the project's
        storage limit, or larger than files_max_bytes) is the batch's error, returned. The store being down
        (5xx) is raised: finalizing is tried again at the next poll, the rows still there."""
        expiry = row.output_expires_after
        expires_at = self.clock() + timedelta(seconds=int(expiry["seconds"])) if expiry else None
        for column, outcomes, kind in (
            ("output_file_id", (store.SUCCEEDED,), "output"),
            ("error_file_id", (store.LINE_FAILED, store.LINE_EXPIRED), "error"),
        ):
            if getattr(row, column) is not None:
                continue  # written before this replica (or an earlier try) died
            if not await self._db(lambda s: store.rows_after(s, row.id, outcomes, after=0, limit=1)):
                continue
            try:
                made = await self.files.create(
                    who, filename=f"{row.id}_{kind}.jsonl", chunks=self._file_lines(row.id, outcomes), expires_at=expires_at
                )
            except APIError as exc:
                if exc.status >= 500:
                    raise
                logger.warning("batch %s: its %s file was refused (%s); the batch fails", row.id, kind, exc.message)
                return unstored_file_error(kind, exc)
            await self._db(lambda s: store.transition(s, row.id, from_=store.UNFINISHED, **{column: made["id"]}))
        return None

    async def _file_lines(self, batch_id: str, outcomes: tuple[str, ...]) -> AsyncIterator[bytes]:
        after = 0
        while True:
            page = await self._db(lambda s: [(r.line, output_line(r)) for r in store.rows_after(s, batch_id, outcomes, after=after, limit=PAGE)])
            if not page:
                return
            for _, line in page:
                yield line
            after = page[-1][0]

    # -- helpers ---------------------------------------------------------------------------------

    def _claim(self, session: Session, batch_id: str, statuses: tuple[str, ...]) -> tuple[store.BatchRow, Principal] | None:
        now = self.clock()
        if not store.claim_batch(session, batch_id, self.replica_id, now=now, until=self._lease_end(), statuses=statuses):
            return None
        row = store.get(session, batch_id)
        assert row is not None
        who = objects.principal_of(session, row)
        session.flush()
        session.expunge(row)
        return row, who

    def _lease_end(self) -> datetime:
        return self.clock() + timedelta(seconds=self.settings.lease_seconds)

    async def _db(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function(session, *args)` in one transaction on a worker thread."""

        def run() -> T:
            with self.sessions.begin() as session:
                return function(session, *args)

        return await anyio.to_thread.run_sync(run)

    @staticmethod
    async def _shielded(work: Any) -> Any:
        with anyio.CancelScope(shield=True):
            return await work
