"""The "settled exactly once" contract, with the scripted engine and no clocks: however a request
ends (completed, cut short, disconnected, failed, refused by a full engine, a limit store that
fails), its ledger row is written once with what it used, its reservation comes back, and the
observer hears of it once. Embeddings keep the same account."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from modelhost.engine.embedding.base import EmbedderOverloaded
from modelhost.engine.registry import ServedModel
from modelhost.errors import ServerError, ServiceUnavailable
from modelhost.limits import Admission
from modelhost.pipeline import GenerationPlan, GenerationRun
from modelhost.pipeline.embeddings import EmbeddingPlan, embed
from modelhost.pipeline.inputs import ChatInput, Turn
from modelhost.pipeline.planning import plan_chat
from support.fake_engine import ScriptedEngine

from .world import World


async def _plan(world: World, request_id: str = "req_1", **chat: object) -> GenerationPlan:
    admission = await world.admit(request_id)
    plan = await plan_chat(ChatInput("scripted", (Turn("user", "hi"),), **chat), world.model, admission, max_n=4)  # type: ignore[arg-type]
    return plan.generation


async def _drain(run: GenerationRun) -> list[object]:
    return [event async for event in run.events()]


def test_a_completed_run_is_recorded_once_with_what_it_used(tmp_path: Path) -> None:
    world = World(tmp_path)

    async def main() -> GenerationRun:
        plan = await _plan(world)
        async with world.pipeline.run(plan) as run:
            await _drain(run)
        await run.settle()  # again: the end of a stream and the response both settle
        return run

    run = asyncio.run(main())
    prompt = len(world.engine.tokenize("user: hi\nassistant: "))
    assert world.rows() == [("req_1", "completed", prompt, len("Hello, world"))]
    assert [(r.operation, r.outcome, r.completion_tokens) for r in world.observer.reports] == [("chat.completions", "completed", 12)]
    assert run.recorded


def test_a_run_stopped_mid_stream_is_cancelled_with_the_tokens_it_made(tmp_path: Path) -> None:
    world = World(tmp_path)

    async def main() -> None:
        async with world.pipeline.run(await _plan(world)) as run:
            async for _ in run.events():
                break  # the client stopped reading after the first piece

    asyncio.run(main())
    assert world.rows()[0][1:] == ("cancelled", world.rows()[0][2], len("Hello"))
    assert world.engine.generations[0].cancelled
    assert len(world.observer.reports) == 1


def test_a_disconnect_while_waiting_for_the_engine_settles_once_shielded(tmp_path: Path) -> None:
    gate = asyncio.Event()
    world = World(tmp_path, ScriptedEngine(gate=gate))

    async def main() -> None:
        plan = await _plan(world)

        async def request() -> None:
            async with world.pipeline.run(plan) as run:
                await _drain(run)

        task = asyncio.ensure_future(request())
        while not world.engine.generations:  # submitted, now held at the gate
            await asyncio.sleep(0)
        task.cancel()  # what a disconnect does to the request's task
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [row[1] for row in world.rows()] == ["cancelled"]
    assert [r.outcome for r in world.observer.reports] == ["cancelled"]


def test_an_engine_failure_is_a_server_error_and_a_failed_row(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(fail=True))

    async def main() -> None:
        async with world.pipeline.run(await _plan(world)) as run:
            with pytest.raises(ServerError):
                await _drain(run)

    asyncio.run(main())
    assert [row[1] for row in world.rows()] == ["failed"]


def test_a_full_engine_is_a_503_and_leaves_no_row_and_no_reservation(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(overloaded=True))

    async def main() -> None:
        plan = await _plan(world)
        with pytest.raises(ServiceUnavailable) as refused:
            await world.pipeline.run(plan).__aenter__()
        assert refused.value.code == "overloaded" and refused.value.headers == {"Retry-After": "1"}

    asyncio.run(main())
    assert world.rows() == [] and world.observer.reports == []


def test_a_limit_store_that_fails_to_settle_does_not_cost_the_ledger_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path)

    async def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError("limit store gone")

    monkeypatch.setattr(world.limiter, "settle", broken)

    async def main() -> None:
        async with world.pipeline.run(await _plan(world)) as run:
            await _drain(run)

    asyncio.run(main())
    assert [row[1] for row in world.rows()] == ["completed"]


class _Embedder:
    """Just enough of an embedder: one unit vector per sequence, or a full queue."""

    dimensions = 4

    def __init__(self, overloaded: bool = False) -> None:
        self.overloaded = overloaded

    async def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        if self.overloaded:
            raise EmbedderOverloaded()
        return np.ones((len(sequences), self.dimensions), dtype=np.float32) / 2


def _embedding_plan(world: World, admission: Admission, embedder: _Embedder) -> EmbeddingPlan:
    model = ServedModel(id="scripted", created=0, owned_by="test", engine=None, fingerprint="fp", embedder=embedder)  # type: ignore[arg-type]
    return EmbeddingPlan(world.who, model, admission.request_id, [[1, 2, 3], [4, 5]], admission)


def test_embeddings_keep_the_same_account_and_reach_the_observer(tmp_path: Path) -> None:
    world = World(tmp_path)

    async def main() -> None:
        result = await embed(world.pipeline, _embedding_plan(world, await world.admit("embd_1"), _Embedder()))
        assert result.vectors.shape == (2, 4)

    asyncio.run(main())
    assert world.rows() == [("embd_1", "completed", 5, 0)]
    assert [(r.operation, r.outcome, r.prompt_tokens) for r in world.observer.reports] == [("embeddings", "completed", 5)]


def test_a_full_embedder_leaves_no_row(tmp_path: Path) -> None:
    world = World(tmp_path)

    async def main() -> None:
        with pytest.raises(ServiceUnavailable):
            await embed(world.pipeline, _embedding_plan(world, await world.admit("embd_1"), _Embedder(overloaded=True)))

    asyncio.run(main())
    assert world.rows() == [] and world.observer.reports == []


class _Leaving:
    """A request whose client disconnects once `gone` is set (what `until_disconnect` watches)."""

    def __init__(self, gone: asyncio.Event) -> None:
        self.gone = gone

    async def receive(self) -> dict[str, str]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def test_a_disconnect_while_embeddings_settle_does_not_break_the_settlement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The route runs the embeddings under `until_disconnect`: its cancellation must wait for the
    shielded settling (limits, then the ledger row) instead of cutting it off halfway."""
    from modelhost.api.generation import ClientDisconnected, until_disconnect

    world = World(tmp_path)
    settling, resume = asyncio.Event(), asyncio.Event()
    settle_limits = world.limiter.settle

    async def slow_settle(*args: object, **kwargs: object) -> None:
        settling.set()  # the client leaves now, while the limit store answers
        await resume.wait()
        await settle_limits(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(world.limiter, "settle", slow_settle)

    async def main() -> None:
        plan = _embedding_plan(world, await world.admit("embd_1"), _Embedder())
        leaving = asyncio.ensure_future(until_disconnect(_Leaving(settling), embed(world.pipeline, plan)))  # type: ignore[arg-type]
        await settling.wait()
        for _ in range(5):  # let the disconnect be seen and the cancellation delivered
            await asyncio.sleep(0)
        resume.set()
        with contextlib.suppress(ClientDisconnected):  # or the result, had the embedding already come back
            await leaving

    asyncio.run(main())
    assert world.rows() == [("embd_1", "completed", 5, 0)]
    assert [r.outcome for r in world.observer.reports] == ["completed"]


def test_an_observer_that_fails_costs_no_ledger_row(tmp_path: Path) -> None:
    world = World(tmp_path)

    def broken(report: object) -> None:
        raise RuntimeError("metrics backend gone")

    world.observer.settled = broken  # type: ignore[method-assign]

    async def main() -> None:
        async with world.pipeline.run(await _plan(world)) as run:
            await _drain(run)

    asyncio.run(main())
    assert [row[1] for row in world.rows()] == ["completed"]
