"""Fair shares of an engine (`engine/fair_share.py`): the waiting places of a queue, and the wrapper
that gives upstream and vLLM engines no more sequences in flight than they run at once, shared out
per organization and project, with the rest waiting here and handed on round robin."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from modelhost.catalog.build import build_models
from modelhost.catalog.schema import load_catalog
from modelhost.config import Settings
from modelhost.engine.base import EngineFailed, EngineOverloaded, GenerationRequest, SamplingParams, TextDelta
from modelhost.engine.fair_share import FairShareEngine, InFlightLimits, QueueShares, ShareLimits
from modelhost.pipeline.engine_errors import client_error

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


def test_default_shares_are_a_quarter_per_organization_and_half_of_that_per_project() -> None:
    assert ShareLimits.of(256) == ShareLimits(256, 64, 32)
    assert ShareLimits.of(1) == ShareLimits(1, 1, 1)
    assert ShareLimits.of(8) == ShareLimits(8, 2, 1)
    assert ShareLimits.of(8, per_organization=20, per_project=30) == ShareLimits(8, 8, 8)  # never above the whole
    assert ShareLimits.of(100, per_organization=10) == ShareLimits(100, 10, 5)


def test_in_flight_an_organization_may_have_half_and_a_project_its_organizations_share() -> None:
    assert InFlightLimits.of(256) == InFlightLimits(256, 128, 128)
    assert InFlightLimits.of(64) == InFlightLimits(64, 32, 32)
    assert InFlightLimits.of(1) == InFlightLimits(1, 1, 1)
    assert InFlightLimits.of(8, per_project=2) == InFlightLimits(8, 4, 2)
    assert InFlightLimits.of(8, per_organization=20, per_project=30) == InFlightLimits(8, 8, 8)


def test_shares_refuse_past_the_project_the_organization_and_the_total() -> None:
    shares = QueueShares(ShareLimits(4, 2, 1))
    shares.take("a", "p1")
    with pytest.raises(EngineOverloaded, match="project"):
        shares.take("a", "p1")
    shares.take("a", "p2")
    with pytest.raises(EngineOverloaded, match="organization"):
        shares.take("a", "p3")
    shares.take("b", "p1")  # the same project id in another organization is another project
    shares.take("c", "p")
    with pytest.raises(EngineOverloaded, match="full"):
        shares.take("d", "p")
    shares.take("a", "p1", joins_admitted=True)  # a later part of an admitted request is never refused
    assert shares.held == 5
    for tenant in [("a", "p1"), ("a", "p1"), ("a", "p2"), ("b", "p1"), ("c", "p")]:
        shares.give_back(*tenant)
    assert shares.held == 0
    shares.take("a", "p1")


# -- a forwarding engine ---------------------------------------------------------------------------


class _Generation:
    """Runs until `finish()`: one text event, then the end."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.cancelled = False
        self.done = asyncio.Event()

    completion_tokens = 1
    cached_tokens = 0

    def finish(self) -> None:
        self.done.set()

    def cancel(self) -> None:
        self.cancelled = True
        self.done.set()

    async def __aiter__(self) -> AsyncIterator[object]:
        await self.done.wait()
        if not self.cancelled:
            yield TextDelta(0, "x")


class _Upstream:
    """An inner engine that records what it was handed, and in whose context."""

    forwards_requests = True
    model_id = "up"

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self.refuse = False
        self.handed: list[_Generation] = []
        self.contexts: dict[str, str] = {}
        self.started = False

    async def start(self) -> None:
        self.started = True

    def state(self) -> dict[str, object]:
        return {"model": self.model_id, "slots_busy": len(self.running), "queue_depth": 0}

    @property
    def running(self) -> list[_Generation]:
        return [g for g in self.handed if not g.done.is_set()]

    def ids(self) -> list[str]:
        return [g.request.request_id for g in self.handed]

    def submit(self, request: GenerationRequest) -> _Generation:
        if self.refuse:
            raise EngineOverloaded("upstream says no")
        self.contexts[request.request_id] = CALLER.get()
        generation = _Generation(request)
        self.handed.append(generation)
        return generation

    def end(self, request_id: str) -> None:
        next(g for g in self.handed if g.request.request_id == request_id).finish()


def _request(rid: str, organization: str, project: str = "p", *, n: int = 1, part: int = 0) -> GenerationRequest:
    return GenerationRequest(rid, (), SamplingParams(max_tokens=1), n=n, cache_scope=organization, project=project, part=part)


async def _engine(in_flight: int | None = 8, queue: ShareLimits | None = None, **shares: int) -> tuple[FairShareEngine, _Upstream]:
    inner = _Upstream(capacity=16)
    engine = FairShareEngine(inner, queue or ShareLimits.of(64), in_flight=in_flight, **shares)  # type: ignore[arg-type]
    await engine.start()
    return engine, inner


class _Client:
    """Requests submitted and read to the end by their own tasks, as the API does."""

    def __init__(self, engine: FairShareEngine) -> None:
        self.engine = engine
        self.tasks: dict[str, asyncio.Task[list[object]]] = {}
        self.generations: dict[str, object] = {}

    def send(self, request: GenerationRequest) -> None:
        generation = self.engine.submit(request)
        self.generations[request.request_id] = generation

        async def read() -> list[object]:
            CALLER.set(request.request_id)
            return [event async for event in generation]  # type: ignore[attr-defined]

        self.tasks[request.request_id] = asyncio.get_running_loop().create_task(read())


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def test_a_flooding_organization_leaves_room_for_another_to_be_forwarded_at_once() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=8)  # 4 per organization
        client = _Client(engine)
        for i in range(20):
            client.send(_request(f"a{i}", "A", f"p{i % 3}"))
        await _settle()
        assert inner.ids() == ["a0", "a1", "a2", "a3"]  # half of the upstream's batch; 16 wait here, not upstream
        assert engine.state()["queue_depth"] == 16 and engine.state()["slots_total"] == 8
        client.send(_request("b0", "B"))
        assert inner.ids()[-1] == "b0" and engine.in_flight == 5  # forwarded at once, whatever A sent
        inner.end("a0")
        await _settle()
        assert inner.ids()[-1] == "a4" and engine.in_flight == 5  # A's next takes A's freed place
        for task in client.tasks.values():
            task.cancel()
        await _settle()
        assert engine.in_flight == 0 and engine.state()["queue_depth"] == 0 and engine.queue.held == 0

    _run(main)


def test_waiting_requests_are_handed_on_round_robin_by_organization_then_project() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=2, per_organization=2)
        client = _Client(engine)
        for rid, organization, project in [
            ("a1", "A", "x"), ("a2", "A", "x"), ("a3", "A", "x"), ("a4", "A", "y"),
            ("b1", "B", "p"), ("b2", "B", "p"), ("c1", "C", "p"),
        ]:
            client.send(_request(rid, organization, project))
        await _settle()
        assert inner.ids() == ["a1", "a2"]
        order = []
        for _ in range(5):
            inner.running[0].finish()  # the oldest running one ends
            await _settle()
            order.append(inner.ids()[-1])
        # B and C first (nothing in flight, never served); then A's project y, never served, before x;
        # then B (nothing in flight) before A (one); then A's last.
        assert order == ["b1", "c1", "a4", "b2", "a3"]
        for task in client.tasks.values():
            task.cancel()

    _run(main)


def test_n_choices_are_n_sequences_in_flight() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=8)  # 4 per organization
        client = _Client(engine)
        client.send(_request("a-n3", "A", n=3))
        client.send(_request("a-n2", "A", n=2))  # 3 + 2 > 4: waits
        client.send(_request("b-n9", "B", n=9))  # more than B's share: counted as the share, so it can run
        await _settle()
        assert inner.ids() == ["a-n3", "b-n9"] and engine.in_flight == 7
        inner.end("a-n3")
        await _settle()
        assert inner.ids()[-1] == "a-n2" and engine.in_flight == 6
        for task in client.tasks.values():
            task.cancel()

    _run(main)


def test_a_request_that_must_wait_takes_a_waiting_place_of_its_tenant_or_is_refused() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=1, queue=ShareLimits(3, 2, 1))
        client = _Client(engine)
        client.send(_request("a1", "A", "x"))  # runs
        client.send(_request("a2", "A", "x"))  # waits: project x's one place
        with pytest.raises(EngineOverloaded, match="project"):
            engine.submit(_request("a3", "A", "x"))
        client.send(_request("a4", "A", "y"))
        with pytest.raises(EngineOverloaded, match="organization"):
            engine.submit(_request("a5", "A", "z"))
        engine.submit(_request("a2-part", "A", "x", part=1))  # a later part of an admitted request is never refused
        with pytest.raises(EngineOverloaded, match="full"):
            engine.submit(_request("b1", "B"))
        assert engine.queue.held == 3 and inner.ids() == ["a1"]
        inner.end("a1")
        await _settle()
        assert engine.queue.held == 2  # the request handed on gave its waiting place back
        for task in client.tasks.values():
            task.cancel()

    _run(main)


def test_a_cancelled_or_abandoned_request_gives_back_what_it_held() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=1)
        running = engine.submit(_request("a1", "A"))
        waiting = engine.submit(_request("b1", "B"))
        assert engine.queue.held == 1
        waiting.cancel()  # gives its waiting place back, and is never forwarded
        waiting.cancel()
        assert engine.queue.held == 0 and [event async for event in waiting] == []
        reader = asyncio.get_running_loop().create_task(_read(engine.submit(_request("c1", "C"))))
        await _settle()
        reader.cancel()  # its client left while it waited
        await _settle()
        assert engine.queue.held == 0 and engine.state()["queue_depth"] == 0
        running.cancel()  # the running one: the upstream request is cancelled and its place is free
        assert inner.handed[0].cancelled and engine.in_flight == 0
        assert inner.ids() == ["a1"]

    _run(main)


async def _read(generation: object) -> list[object]:
    return [event async for event in generation]  # type: ignore[attr-defined]


def test_an_ended_stream_hands_its_place_on() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=1)
        first = engine.submit(_request("a1", "A"))
        second = engine.submit(_request("a2", "A"))
        inner.end("a1")
        assert [event async for event in first] == [TextDelta(0, "x")]
        inner_second = asyncio.get_running_loop().create_task(_read(second))
        await _settle()
        assert inner.ids() == ["a1", "a2"]
        inner.end("a2")
        assert await inner_second == [TextDelta(0, "x")]
        assert engine.in_flight == 0

    _run(main)


def test_the_inner_engine_refusing_a_request_leaves_nothing_held() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=1)
        inner.refuse = True
        with pytest.raises(EngineOverloaded, match="upstream"):  # handed on at once: raised by submit, as before
            engine.submit(_request("a1", "A"))
        assert engine.in_flight == 0 and engine.queue.held == 0
        inner.refuse = False
        first = engine.submit(_request("a2", "A"))
        later = engine.submit(_request("b1", "B"))
        inner.refuse = True
        inner.end("a2")
        assert [event async for event in first] == [TextDelta(0, "x")]
        with pytest.raises(EngineFailed) as failed:  # refused when its turn came: the API's 503 overloaded
            await _read(later)
        told = client_error(failed.value)
        assert told.status == 503 and told.code == "overloaded" and told.headers == {"Retry-After": "1"}
        assert engine.in_flight == 0 and engine.queue.held == 0

    _run(main)


def test_a_request_that_waited_is_forwarded_in_its_own_context() -> None:
    """Not in the context of the request whose end made room: its logs and access line stay its own."""

    async def main() -> None:
        engine, inner = await _engine(in_flight=1)
        client = _Client(engine)
        CALLER.set("submitter")
        client.send(_request("a1", "A"))
        client.send(_request("b1", "B"))
        await _settle()
        inner.end("a1")
        await client.tasks["a1"]
        await _settle()
        assert inner.contexts == {"a1": "submitter", "b1": "b1"}
        client.tasks["b1"].cancel()

    _run(main)


def test_without_a_configured_total_the_inner_engines_capacity_counts_once_started() -> None:
    async def main() -> None:
        inner = _Upstream(capacity=48)
        engine = FairShareEngine(inner, ShareLimits.of(16), per_project=8)  # type: ignore[arg-type]
        assert engine.limits is None
        await engine.start()
        assert inner.started and engine.limits == InFlightLimits(48, 24, 8)
        assert engine.forwards_requests and engine.model_id == "up"  # everything else is the inner engine's

    _run(main)


def test_an_openai_model_forwards_64_sequences_per_replica_by_default(tmp_path: Path) -> None:
    """The models file's defaults (`catalog/build.py`): a replica's batch each, half for one organization."""
    models = tmp_path / "models.toml"

    def limits(extra: str) -> tuple[InFlightLimits | None, ShareLimits]:
        models.write_text(
            '[[models]]\nid = "pool"\ncontext_length = 2048\n[models.backend]\ntype = "openai"\n'
            'base_urls = ["http://10.0.0.11:8000/v1", "http://10.0.0.12:8000/v1"]\n' + extra
        )
        _, built = build_models(models, load_catalog(models), Settings(home=tmp_path), {})
        (model,) = built.values()
        assert model.engine is not None
        fair = model.engine.inner
        assert isinstance(fair, FairShareEngine)
        return fair.limits, fair.queue.limits

    assert limits("") == (InFlightLimits(128, 64, 64), ShareLimits(256, 64, 32))
    assert limits("max_in_flight_per_replica = 256\n")[0] == InFlightLimits(512, 256, 256)
    assert limits("max_in_flight = 10\nmax_in_flight_per_organization = 10\nmax_queued = 8\n") == (
        InFlightLimits(10, 10, 10),
        ShareLimits(8, 2, 1),
    )
