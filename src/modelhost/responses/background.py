"""Background responses: run to the end detached from the request that made them, their events kept.

The request stores the response `queued` (with the replica that runs it) and returns at once, or
streams; a task on this replica then runs the generation, storing `in_progress` and then the
finished object with its whole event stream. Each state is stored only while the response is
still running in the store, so a cancel (which marks it `cancelled` there, from any replica)
always wins; on this replica it also cancels the task, which frees the engine's slots and settles
the ledger with the tokens made so far.

Events: `response.created` and `response.queued` (status queued), then the stream a foreground
response has. While the task runs they are in its `EventLog` here, so a client can follow them
live from any point (`GET …?stream=true&starting_after=N`); once it has finished they are read back
from the store, on any replica.

A run has a deadline (`deadline_seconds`, shorter than its concurrency lease): past it, it ends
`failed`, settled and stored. Its final state is stored before its last event is published, and
that save is retried for a while (`FINAL_SAVE_DELAYS`) should the store fail.

Nothing is left running forever: a replica that stops has a heartbeat (the ledger's) that goes
stale, and a run whose final state could not be stored has no task left on its replica; either
way the next read of the response marks it `failed` (`responses.context.get`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import anyio

from modelhost.errors import APIError
from modelhost.pipeline import GenerationRun
from modelhost.pipeline.assembly import Assembler
from modelhost.responses import render
from modelhost.responses.events import Event, ResponseEvents
from modelhost.structured.tools import ToolPlan

logger = logging.getLogger(__name__)
# Stores a state of the response; with its events once it has finished.
Save = Callable[[dict[str, Any], "list[dict[str, Any]] | None"], Awaitable[object]]
# Whether the store still has the response running (a cancel or delete on any replica ends that).
StillRunning = Callable[[], Awaitable[bool]]
CANCEL_POLL_SECONDS = 2.0
FINAL_SAVE_DELAYS = (1.0, 3.0, 6.0)  # seconds before each retry of a final save that failed: ~10 s in all


class EventLog:
    """A running response's events so far; any number of followers read them as they come."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = False
        self._changed = asyncio.Event()

    def add(self, events: list[Event]) -> None:
        self.events.extend(events)
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int) -> AsyncIterator[Event]:
        """The events whose sequence number is above `after`, as they come, until the response ends."""
        sent = after + 1
        while True:
            changed = self._changed
            while sent < len(self.events):
                yield self.events[sent]
                sent += 1
            if self.done:
                return
            await changed.wait()


class BackgroundResponses:
    """This replica's running background responses, by id, with their event logs."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._logs: dict[str, EventLog] = {}
        self._reserved: set[str] = set()

    def reserve(self, response_id: str) -> None:
        """Count `response_id` as running here from before it is stored `queued` until it starts (or
        `release`): a read in between must not take it for a run this replica lost."""
        self._reserved.add(response_id)

    def release(self, response_id: str) -> None:
        self._reserved.discard(response_id)

    def start(self, response_id: str, log: EventLog, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"background response {response_id}")
        self._tasks[response_id], self._logs[response_id] = task, log
        self._reserved.discard(response_id)

        def finished(_: object) -> None:
            self._tasks.pop(response_id, None)
            self._logs.pop(response_id, None)
            log.close()

        task.add_done_callback(finished)

    def runs(self, response_id: str) -> bool:
        """Whether this replica runs `response_id` now (or is about to start it)."""
        return response_id in self._tasks or response_id in self._reserved

    def log(self, response_id: str) -> EventLog | None:
        return self._logs.get(response_id)

    def cancel(self, response_id: str) -> None:
        task = self._tasks.get(response_id)
        if task is not None:
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)


def queued_events(renderer: ResponseEvents, queued: dict[str, Any]) -> list[Event]:
    return [renderer.event("response.created", response=queued), renderer.event("response.queued", response=queued)]


async def _stop_when_not_running(still_running: StillRunning, task: asyncio.Task[Any], every: float) -> None:
    """Cancel `task` once the store says its response no longer runs (cancelled or deleted on another replica)."""
    while True:
        await anyio.sleep(every)
        try:
            running = await still_running()
        except Exception:
            logger.warning("could not read whether a background response still runs; will ask again", exc_info=True)
            continue
        if not running:
            task.cancel()
            return


async def run_detached(
    run: GenerationRun,
    tools: ToolPlan | None,
    renderer: ResponseEvents,
    log: EventLog,
    *,
    save: Save,
    still_running: StillRunning | None = None,
    poll_seconds: float = CANCEL_POLL_SECONDS,
    deadline_seconds: float | None = None,
) -> None:
    """Run `run` to its end, logging its events and storing each state of the response through
    `save`; settles the run however it ends. With `still_running`, a cancel made on another replica
    stops it within `poll_seconds`; past `deadline_seconds` it ends failed."""
    frame = renderer.response
    task = asyncio.current_task()
    assert task is not None, "run_detached runs as a task"
    watcher = asyncio.create_task(_stop_when_not_running(still_running, task, poll_seconds)) if still_running else None
    limit = asyncio.timeout(deadline_seconds)
    try:
        try:
            async with limit:
                log.add([renderer.event("response.in_progress", response=frame)])
                await save(frame, None)
                assembler = Assembler(1, tools)
                async for engine_event in run.events():
                    for piece in assembler.feed(engine_event):
                        log.add(renderer.feed(piece))
            await run.settle()
            usage = render.usage(run.prompt_tokens, run.completion_tokens, run.cached_tokens)
            final = render.finish(frame, renderer.output, renderer.finish_reason, usage)
            await _finish(log, save, [renderer.finished(final)], final)
        except APIError as exc:
            code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
            await _failed(renderer, log, save, code, exc.message, exc.code, exc.param)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and limit.expired():
                message = f"The response did not finish within the server's limit of {deadline_seconds:g} seconds."
                await _failed(renderer, log, save, "server_error", message, "timeout", None)
            else:
                logger.exception("background response %s failed", frame["id"])
                await _failed(renderer, log, save, "server_error", "The server failed while generating this response.", None, None)
    except Exception:
        # Its final state could not be stored: with no task left here, its next read marks it failed.
        logger.exception("background response %s: its final state could not be stored", frame["id"])
    finally:
        if watcher is not None:
            watcher.cancel()
        with anyio.CancelScope(shield=True):
            await run.settle()


async def _failed(renderer: ResponseEvents, log: EventLog, save: Save, code: str, message: str, error_code: str | None, param: str | None) -> None:
    failed = render.failed(renderer.response, code, message, renderer.output)
    await _finish(log, save, renderer.failed(error_code, message, param, failed), failed)


async def _finish(log: EventLog, save: Save, last: list[Event], response: dict[str, Any]) -> None:
    """Store the response's final state with all its events, then publish the last ones: a follower
    told it ended can read it back. The save is retried (`FINAL_SAVE_DELAYS`), whatever cancels the task."""
    events = [payload for _, payload in [*log.events, *last]]
    with anyio.CancelScope(shield=True):
        for delay in (*FINAL_SAVE_DELAYS, None):
            try:
                await save(response, events)
                break
            except Exception:
                if delay is None:
                    raise
                logger.warning("could not store background response %s; retrying in %gs", response["id"], delay, exc_info=True)
                await anyio.sleep(delay)
    log.add(last)
