"""Fuzzing for issue #12, item 6: the fair shares of an engine, as a class, not just its known examples.

A random sequence of submits across organizations and projects with random n (now and then a
later part of a multi-prompt request, or one the upstream refuses), each request finished,
cancelled or abandoned by its reader in any order, runs against `FairShareEngine` around a fake
upstream, with random in-flight and waiting-place shares (the waiting places are the `QueueShares`
the llama.cpp engine's queue uses too). After every step: sequences in flight never exceed the
total or an organization's or project's share; waiting places never exceed theirs (later parts
join, never refused); an organization holding nothing is refused only by a full queue; nothing
waits on an idle engine; and once everyone has left, every place has come back.
The limiter's classes (items 12, 2, 7) are fuzzed in `test_R2_fuzz_limits.py`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from modelhost.engine.base import EngineFailed, EngineOverloaded, GenerationRequest, SamplingParams, TextDelta
from modelhost.engine.fair_share import FairShareEngine, ShareLimits


class _Inner:
    """Runs until finished or cancelled: one text event, then the end."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.done = asyncio.Event()
        self.cancelled = False

    completion_tokens = 1
    cached_tokens = 0

    def cancel(self) -> None:
        self.cancelled = True
        self.done.set()

    async def __aiter__(self) -> AsyncIterator[object]:
        await self.done.wait()
        if not self.cancelled:
            yield TextDelta(0, "x")


class _Upstream:
    """An inner engine that refuses the request ids in `refuse` and records the rest."""

    forwards_requests = True
    model_id = "up"
    capacity = 64

    def __init__(self) -> None:
        self.handed: list[_Inner] = []
        self.refuse: set[str] = set()

    async def start(self) -> None:
        return None

    def state(self) -> dict[str, object]:
        return {"model": self.model_id}

    def submit(self, request: GenerationRequest) -> _Inner:
        if request.request_id in self.refuse:
            raise EngineOverloaded("upstream says no")
        inner = _Inner(request)
        self.handed.append(inner)
        return inner


@dataclass
class Sent:
    request: GenerationRequest
    generation: object
    reader: asyncio.Task[list[object]]


_submit = st.tuples(st.just("submit"), st.integers(0, 2), st.integers(0, 1), st.integers(1, 4), st.booleans(), st.integers(0, 9))
# One organization floods two projects past their shares; another arrives; everything ends in turn.
FLOOD = [("submit", 0, 0, 1, False, 1)] * 4 + [("submit", 0, 1, 2, False, 1)] * 3 + [("submit", 1, 0, 1, False, 1),
         ("finish", 0), ("leave", 1), ("cancel", 4), ("submit", 2, 2, 3, True, 0), ("finish", 7), ("finish", 2)]
fair_ops = st.lists(
    st.one_of(_submit, _submit, st.tuples(st.sampled_from(["finish", "cancel", "leave"]), st.integers(0, 40))),
    min_size=6,
    max_size=40,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(ops=FLOOD, total=2, per_organization=None, per_project=None, queue=(8, 4, 2))
@example(ops=FLOOD, total=4, per_organization=3, per_project=2, queue=(3, None, None))
@given(
    ops=fair_ops,
    total=st.integers(1, 8),
    per_organization=st.one_of(st.none(), st.integers(1, 8)),
    per_project=st.one_of(st.none(), st.integers(1, 8)),
    queue=st.tuples(st.integers(1, 8), st.one_of(st.none(), st.integers(1, 8)), st.one_of(st.none(), st.integers(1, 8))),
)
def test_fair_shares_hold_whatever_tenants_send_and_every_place_comes_back(
    ops: list[tuple], total: int, per_organization: int | None, per_project: int | None, queue: tuple[int, int | None, int | None]
) -> None:
    async def main() -> None:
        inner = _Upstream()
        engine = FairShareEngine(inner, ShareLimits.of(*queue), in_flight=total, per_organization=per_organization,
                                 per_project=per_project)  # type: ignore[arg-type]
        await engine.start()
        flight, places = engine.limits, engine.queue.limits
        assert flight is not None
        sent: list[Sent] = []
        unexpected: list[BaseException] = []

        async def read(generation: object) -> list[object]:
            try:
                return [e async for e in generation]  # type: ignore[attr-defined]
            except EngineFailed:  # the upstream refused it when its turn came
                return []
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001  anything else is a bug: reported below
                unexpected.append(exc)
                raise

        async def settle() -> None:
            for _ in range(6):
                await asyncio.sleep(0)

        def state_of(s: Sent) -> str:
            return s.generation.state.value  # type: ignore[attr-defined]

        def check(step: object) -> None:
            running = [g for g in inner.handed if not g.done.is_set()]
            if len({g.request.cache_scope for g in running}) > 1:
                event("R2-6: several organizations in flight")
            weight = {id(s.request): min(s.request.n, flight.per_project) for s in sent}
            organizations: Counter[str] = Counter()
            projects: Counter[tuple[str, str]] = Counter()
            for g in running:
                organizations[g.request.cache_scope] += weight[id(g.request)]
                projects[g.request.cache_scope, g.request.project] += weight[id(g.request)]
            assert engine.in_flight == sum(organizations.values()) <= flight.total, step
            assert all(v <= flight.per_organization for v in organizations.values()), (step, organizations)
            assert all(v <= flight.per_project for v in projects.values()), (step, projects)
            waiting = [s for s in sent if state_of(s) == "waiting"]
            assert engine.queue.held == len(waiting) == engine.state()["queue_depth"], step
            first_parts = [s.request for s in waiting if s.request.part == 0]  # later parts join, never refused
            assert len(first_parts) <= places.total, step
            assert all(n <= places.per_organization for n in Counter(r.cache_scope for r in first_parts).values()), step
            assert all(n <= places.per_project for n in Counter((r.cache_scope, r.project) for r in first_parts).values()), step
            if engine.in_flight == 0:
                assert not waiting, (step, "a request waits on an idle engine")
            assert not unexpected, unexpected

        for step, op in enumerate(ops):
            if op[0] == "submit":
                _, o, p, n, later_part, refuse = op
                organization, project = f"org{o}", f"proj{p}"
                request = GenerationRequest(f"g{step}", (), SamplingParams(max_tokens=1), n=n, cache_scope=organization,
                                            project=project, part=1 if later_part and step % 3 == 0 else 0)
                if refuse == 0:
                    inner.refuse.add(request.request_id)
                holds = any(s.request.cache_scope == organization and state_of(s) != "ended" for s in sent)
                held_before = engine.queue.held
                try:
                    generation = engine.submit(request)
                except EngineOverloaded as exc:
                    assert engine.queue.held == held_before, step  # a refusal takes nothing
                    if request.request_id in inner.refuse and "upstream" in str(exc):
                        continue
                    assert request.part == 0, (step, "a later part is never refused")
                    if not holds:
                        assert "full" in str(exc) and held_before >= places.total, (step, str(exc))
                    event("R2-6: refused: " + next(w for w in ("full", "organization", "project") if w in str(exc)))
                    continue
                if not holds and engine.queue.held:
                    event("R2-6: an organization holding nothing let in while others wait")
                sent.append(Sent(request, generation, asyncio.get_running_loop().create_task(read(generation))))
            elif sent:
                s = sent[op[1] % len(sent)]
                if op[0] == "finish":
                    found = [g for g in inner.handed if g.request is s.request]
                    if found:
                        found[0].done.set()
                elif op[0] == "cancel":
                    s.generation.cancel()  # type: ignore[attr-defined]
                else:
                    s.reader.cancel()  # its client left
            await settle()
            check(op)

        for s in sent:  # everyone leaves: every place comes back
            s.reader.cancel()
        await settle()
        check("all left")
        assert engine.in_flight == 0 and engine.queue.held == 0 and engine.state()["queue_depth"] == 0
        assert all(g.done.is_set() for g in inner.handed)
        await asyncio.gather(*(s.reader for s in sent), return_exceptions=True)

    asyncio.run(main())
