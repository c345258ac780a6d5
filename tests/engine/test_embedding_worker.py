"""The embedding worker thread: order, bounded queue, cancellation; and how inputs are batched."""

from __future__ import annotations

import asyncio
import threading

import pytest

from modelhost.engine.embedding.base import EmbedderOverloaded, length_buckets
from modelhost.engine.embedding.worker import EmbeddingWorker


def test_jobs_run_on_one_thread_that_is_not_the_event_loops() -> None:
    async def run() -> set[str]:
        worker = EmbeddingWorker("test", max_queued=8)
        worker.start()
        try:
            names = await asyncio.gather(*(worker.run(lambda _: threading.current_thread().name) for _ in range(5)))
        finally:
            worker.stop()
        return set(names)

    names = asyncio.run(run())
    assert len(names) == 1 and names != {threading.current_thread().name}


def test_more_waiting_jobs_than_allowed_are_refused() -> None:
    release = threading.Event()

    async def run() -> None:
        worker = EmbeddingWorker("test", max_queued=1)
        worker.start()
        running = asyncio.ensure_future(worker.run(lambda _: release.wait(5)))
        queued = asyncio.ensure_future(worker.run(lambda _: True))
        await asyncio.sleep(0.05)
        with pytest.raises(EmbedderOverloaded):
            await worker.run(lambda _: True)
        release.set()
        assert await running and await queued
        assert worker.pending == 0
        worker.stop()

    asyncio.run(run())


def test_a_cancelled_job_that_has_not_started_never_runs_and_a_running_one_is_told() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def first(cancelled: threading.Event) -> None:
        started.set()
        release.wait(5)
        seen.append("first saw cancel" if cancelled.is_set() else "first not cancelled")

    async def run() -> None:
        worker = EmbeddingWorker("test", max_queued=4)
        worker.start()
        running = asyncio.ensure_future(worker.run(first))
        waiting = asyncio.ensure_future(worker.run(lambda _: seen.append("second ran")))
        await asyncio.to_thread(started.wait, 5)
        running.cancel()
        waiting.cancel()
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.to_thread(worker.stop)
        assert worker.pending == 0

    asyncio.run(run())
    assert seen == ["first saw cancel"]


def test_buckets_group_similar_lengths_within_the_padded_budget() -> None:
    assert length_buckets([5, 300, 7, 6], max_padded_tokens=1024, max_batch=64) == [[0, 3, 2], [1]]
    assert length_buckets([10] * 5, max_padded_tokens=1000, max_batch=2) == [[0, 1], [2, 3], [4]]
    assert length_buckets([600, 600], max_padded_tokens=1000, max_batch=64) == [[0], [1]]
    assert length_buckets([], max_padded_tokens=1000, max_batch=64) == []
