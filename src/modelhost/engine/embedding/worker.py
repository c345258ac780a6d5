"""One thread that runs an embedder's forward passes in order, with a bounded wait queue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from modelhost.engine.embedding.base import EmbedderOverloaded

T = TypeVar("T")


class EmbeddingWorker:
    """``await worker.run(fn)`` runs ``fn(cancelled)`` on the worker thread and returns its result.

    At most `max_queued` jobs wait behind the running one; more raise `EmbedderOverloaded`. When
    the awaiting task is cancelled (the client left), a job that has not started never runs, and
    a running one sees `cancelled` set so it can stop between batches.
    """

    def __init__(self, name: str, *, max_queued: int) -> None:
        assert max_queued >= 0, "max_queued cannot be negative"
        self._name = name
        self._max_queued = max_queued
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending = 0  # queued plus running

    @property
    def pending(self) -> int:
        return self._pending

    def start(self, initializer: Callable[[], None] | None = None) -> None:
        """Create the thread's executor; `initializer` runs first, on the worker thread."""
        assert self._executor is None, "worker already started"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        if initializer is not None:
            self._executor.submit(initializer).result()

    def stop(self) -> None:
        """Drop the jobs that have not started and wait for the running one to end (blocking)."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        executor.shutdown(wait=True, cancel_futures=True)

    async def run(self, fn: Callable[[threading.Event], T]) -> T:
        if self._executor is None:
            raise RuntimeError(f"embedding worker {self._name} is not running")
        with self._lock:
            if self._pending > self._max_queued:
                raise EmbedderOverloaded(f"{self._pending} embedding jobs are already waiting")
            self._pending += 1
        cancelled = threading.Event()
        try:
            future: Future[T] = self._executor.submit(fn, cancelled)
        except RuntimeError:  # shut down between the check above and here
            self._release(None)
            raise
        future.add_done_callback(self._release)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancelled.set()  # wrap_future cancelled the job if it had not started
            raise

    def _release(self, _: object) -> None:
        with self._lock:
            self._pending -= 1
