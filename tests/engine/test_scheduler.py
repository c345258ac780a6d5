"""The decode-thread scheduler with a fake model: admission, fairness, cancellation, n > 1, reuse."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from modelhost.engine.base import ChoiceFinished, EngineOverloaded, GenerationRequest, SamplingParams, TextDelta
from modelhost.engine.grammar_errors import GrammarError
from modelhost.engine.llamacpp import LlamaCppEngine

from .fake_llama import EOG, FakeModel


def make_engine(model: FakeModel, *, slots: int = 2, batch_tokens: int = 64, **kw) -> LlamaCppEngine:  # type: ignore[no-untyped-def]
    return LlamaCppEngine(
        model, model_id="fake", slots=slots, slot_context=512, batch_tokens=batch_tokens, threads=1, flash_attention=False, **kw  # type: ignore[arg-type]
    )


def request(prompt: list[int], *, max_tokens: int = 5, n: int = 1, scope: str = "org-a", stop: tuple[str, ...] = (), rid: str = "r") -> GenerationRequest:
    return GenerationRequest(rid, prompt, SamplingParams(max_tokens=max_tokens, temperature=0, stop=stop), n=n, cache_scope=scope)


async def drain(generation) -> tuple[dict[int, str], dict[int, str]]:  # type: ignore[no-untyped-def]
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    async for event in generation:
        if isinstance(event, TextDelta):
            texts[event.index] = texts.get(event.index, "") + event.text
        elif isinstance(event, ChoiceFinished):
            reasons[event.index] = event.reason
    return texts, reasons


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_generates_greedy_text_and_finishes_with_length() -> None:
    async def main() -> None:
        engine = make_engine(FakeModel())
        await engine.start()
        texts, reasons = await drain(engine.submit(request([0, 1, 2], max_tokens=4)))
        assert texts == {0: "defg"} and reasons == {0: "length"}
        await engine.stop()

    run(main())


def test_end_of_generation_finishes_with_stop() -> None:
    async def main() -> None:
        engine = make_engine(FakeModel(eog_after=4))
        await engine.start()
        texts, reasons = await drain(engine.submit(request([0, 1, 2], max_tokens=50)))
        assert reasons == {0: "stop"} and texts[0] == "de"
        await engine.stop()

    run(main())


def test_requests_beyond_the_slots_wait_and_all_complete() -> None:
    async def main() -> None:
        model = FakeModel(step_seconds=0.005)
        engine = make_engine(model, slots=2)
        await engine.start()
        gens = [engine.submit(request([i], max_tokens=6, rid=f"r{i}")) for i in range(5)]
        await asyncio.sleep(0.02)
        state = engine.state()
        assert state["slots_busy"] == 2 and state["queue_depth"] == 3
        results = await asyncio.gather(*(drain(g) for g in gens))
        assert all(r[1] == {0: "length"} for r in results)
        assert max(len({seq for _, _, seq, _ in b}) for b in model.context.batches) == 2  # type: ignore[union-attr]
        assert engine.state()["slots_busy"] == 0
        await engine.stop()

    run(main())


def test_one_step_batches_decodes_with_prompt_chunks() -> None:
    async def main() -> None:
        model = FakeModel(step_seconds=0.005)
        engine = make_engine(model, slots=2, batch_tokens=8)
        await engine.start()
        first = engine.submit(request([1, 2], max_tokens=20))
        await asyncio.sleep(0.02)
        second = engine.submit(request(list(range(30)), max_tokens=2, rid="long"))
        await asyncio.gather(drain(first), drain(second))
        mixed = [b for b in model.context.batches if len({seq for _, _, seq, _ in b}) == 2]  # type: ignore[union-attr]
        assert mixed, "the long prompt was prefilled alongside the running sequence"
        assert all(len(b) <= 8 for b in model.context.batches)  # type: ignore[union-attr]
        await engine.stop()

    run(main())


def test_batch_rows_follow_kv_sequence_order_not_admission_order() -> None:
    """llama.cpp decodes a batch whose KV streams come out of order much more slowly."""

    async def main() -> None:
        model = FakeModel(step_seconds=0.005)
        engine = make_engine(model, slots=2)
        await engine.start()
        await drain(engine.submit(request([5], max_tokens=2, rid="warm")))  # slot 0 is now the newer one
        # Different scopes: no prefix reuse, so the least recently used slot (1) goes to the first.
        first = engine.submit(request([1, 2, 3], max_tokens=8, scope="org-a", rid="first"))
        second = engine.submit(request([7, 8, 9], max_tokens=8, scope="org-b", rid="second"))
        await asyncio.gather(drain(first), drain(second))
        batches = model.context.batches  # type: ignore[union-attr]
        both = [b for b in batches if len({seq for _, _, seq, _ in b}) == 2]
        assert both, "the two requests ran in the same steps"
        assert all([seq for _, _, seq, _ in b] == sorted(seq for _, _, seq, _ in b) for b in batches)
        await engine.stop()

    run(main())


def test_fair_between_organizations() -> None:
    async def main() -> None:
        model = FakeModel(step_seconds=0.003)
        engine = make_engine(model, slots=1)
        await engine.start()
        order: list[str] = []

        async def tracked(rid: str, scope: str) -> None:
            gen = engine.submit(request([1], max_tokens=3, scope=scope, rid=rid))
            async for event in gen:
                if isinstance(event, TextDelta) and rid not in order:
                    order.append(rid)

        tasks = [asyncio.ensure_future(tracked(f"a{i}", "org-a")) for i in range(4)]
        await asyncio.sleep(0.001)
        tasks.append(asyncio.ensure_future(tracked("b0", "org-b")))
        await asyncio.gather(*tasks)
        assert order.index("b0") <= 2, order  # org B does not wait behind all of org A's queue
        await engine.stop()

    run(main())


@pytest.mark.parametrize("phase", ["queued", "prefill", "decoding"])
def test_cancellation_frees_the_slot_within_a_step(phase: str) -> None:
    async def main() -> None:
        model = FakeModel(step_seconds=0.01)
        engine = make_engine(model, slots=1, batch_tokens=4)
        await engine.start()
        blocker = engine.submit(request([1], max_tokens=5, rid="blocker")) if phase == "queued" else None
        prompt = list(range(40)) if phase == "prefill" else [1]
        victim = engine.submit(request(prompt, max_tokens=500, rid="victim"))
        await asyncio.sleep(0.035)
        if phase == "queued":
            assert engine.state()["queue_depth"] == 1
        victim.cancel()
        texts, reasons = await asyncio.wait_for(drain(victim), 1)
        assert reasons == {}
        if phase == "decoding":
            assert 0 < victim.completion_tokens < 500
        else:
            assert victim.completion_tokens == 0
        if blocker is not None:
            await drain(blocker)
        await asyncio.sleep(0.05)
        assert engine.state()["slots_busy"] == 0 and engine.state()["queue_depth"] == 0
        await engine.stop()

    run(main())


def test_stop_string_across_token_boundaries_is_not_emitted() -> None:
    async def main() -> None:
        engine = make_engine(FakeModel())
        await engine.start()
        texts, reasons = await drain(engine.submit(request([0], max_tokens=10, stop=("def",))))
        assert texts.get(0, "") == "bc" and reasons == {0: "stop"}
        await engine.stop()

    run(main())


def test_n_choices_share_one_prefill_by_copying_the_kv() -> None:
    async def main() -> None:
        model = FakeModel()
        engine = make_engine(model, slots=3)
        await engine.start()
        texts, reasons = await drain(engine.submit(request([0, 1, 2, 3], max_tokens=3, n=3)))
        assert texts == {0: "efg", 1: "efg", 2: "efg"} and len(reasons) == 3
        prompt_rows = [row for b in model.context.batches for row in b if row[1] < 4]  # type: ignore[union-attr]
        assert len(prompt_rows) == 4, "the prompt was decoded once"
        assert len(model.context.copies) == 2  # type: ignore[union-attr]
        await engine.stop()

    run(main())


def test_prefix_is_reused_within_a_scope_but_not_across() -> None:
    async def main() -> None:
        engine = make_engine(FakeModel(), slots=2)
        await engine.start()
        prompt = list(range(20))
        await drain(engine.submit(request(prompt, max_tokens=1)))
        same = engine.submit(request(prompt[:15] + [40, 41], max_tokens=1))
        await drain(same)
        assert same.cached_tokens == 15
        other = engine.submit(request(prompt, max_tokens=1, scope="org-b"))
        await drain(other)
        assert other.cached_tokens == 0
        await engine.stop()

    run(main())


def test_a_prompt_sharing_only_a_template_opening_does_not_evict_another_conversation() -> None:
    async def main() -> None:
        engine = make_engine(FakeModel(), slots=2)
        await engine.start()
        opening = [1, 2, 3]
        first = opening + list(range(10, 40))
        await drain(engine.submit(request(first, max_tokens=2)))
        other = engine.submit(request(opening + list(range(50, 80)), max_tokens=2))  # shares 3 tokens only
        await drain(other)
        assert other.cached_tokens == 0  # it took the empty slot, not the first conversation's
        again = engine.submit(request(first + [90, 91], max_tokens=1))
        await drain(again)
        assert again.cached_tokens >= len(first)  # the first conversation's cache survived
        await engine.stop()

    run(main())


def test_full_queue_is_overloaded() -> None:
    async def main() -> None:
        model = FakeModel()
        model.gate = threading.Event()  # decode blocks until released
        engine = make_engine(model, slots=1, max_queued=2, max_queued_per_organization=2, max_queued_per_project=2)
        await engine.start()
        gens = [engine.submit(request([1], max_tokens=2, rid=f"r{i}")) for i in range(2)]
        await asyncio.sleep(0.05)
        engine.submit(request([1], max_tokens=2, rid="r2"))  # the first was admitted: room for one more
        with pytest.raises(EngineOverloaded):
            engine.submit(request([1], max_tokens=2, rid="r3"))
        model.gate.set()
        for g in gens:
            await drain(g)
        await engine.stop()

    run(main())


def test_later_parts_of_a_request_join_its_first_part_in_a_full_queue() -> None:
    async def main() -> None:
        model = FakeModel()
        model.gate = threading.Event()
        engine = make_engine(model, slots=1, max_queued=1)
        await engine.start()
        parts = [
            engine.submit(GenerationRequest(f"r-{i}", [1], SamplingParams(max_tokens=2, temperature=0), part=i))
            for i in range(3)
        ]  # submitted back to back: the first has not left the queue when the second arrives
        with pytest.raises(EngineOverloaded):
            engine.submit(request([1], max_tokens=2, rid="other"))  # a new request still meets the limit
        model.gate.set()
        for part in parts:
            assert (await drain(part))[1] == {0: "length"}
        await engine.stop()

    run(main())


def test_an_organization_past_its_share_of_the_queue_leaves_room_for_others() -> None:
    async def main() -> None:
        model = FakeModel()
        model.gate = threading.Event()  # decode blocks until released: nothing leaves the queue
        engine = make_engine(model, slots=1, max_queued=8)  # shares: 2 per organization, 1 per project
        await engine.start()
        flood = [engine.submit(request([1], max_tokens=2, scope="org-a", rid="a-running"))]
        await asyncio.sleep(0.05)  # admitted: it holds the slot, not a queue place
        flood.append(engine.submit(GenerationRequest("a-p1", [1], SamplingParams(max_tokens=2, temperature=0), cache_scope="org-a", project="p1")))
        with pytest.raises(EngineOverloaded, match="project"):
            engine.submit(GenerationRequest("a-p1-2", [1], SamplingParams(max_tokens=2, temperature=0), cache_scope="org-a", project="p1"))
        flood.append(engine.submit(GenerationRequest("a-p2", [1], SamplingParams(max_tokens=2, temperature=0), cache_scope="org-a", project="p2")))
        with pytest.raises(EngineOverloaded, match="organization"):
            engine.submit(GenerationRequest("a-p3", [1], SamplingParams(max_tokens=2, temperature=0), cache_scope="org-a", project="p3"))
        other = engine.submit(request([1], max_tokens=2, scope="org-b", rid="b"))  # the queue has room for org B
        assert engine.state()["queue_depth"] == 3
        model.gate.set()
        for g in [*flood, other]:
            assert (await drain(g))[1] == {0: "length"}
        assert engine.state()["queue_depth"] == 0
        engine.submit(GenerationRequest("a-again", [1], SamplingParams(max_tokens=2, temperature=0), cache_scope="org-a", project="p1"))
        await engine.stop()

    run(main())


def test_admission_goes_round_robin_between_the_projects_of_an_organization() -> None:
    async def main() -> None:
        model = FakeModel(step_seconds=0.003)
        engine = make_engine(model, slots=1, max_queued=64)
        await engine.start()
        order: list[str] = []

        async def tracked(rid: str, project: str) -> None:
            gen = engine.submit(GenerationRequest(rid, [1], SamplingParams(max_tokens=3, temperature=0), cache_scope="org-a", project=project))
            async for event in gen:
                if isinstance(event, TextDelta) and rid not in order:
                    order.append(rid)

        tasks = [asyncio.ensure_future(tracked(f"p1-{i}", "p1")) for i in range(4)]
        await asyncio.sleep(0.001)
        tasks.append(asyncio.ensure_future(tracked("p2-0", "p2")))
        await asyncio.gather(*tasks)
        assert order.index("p2-0") <= 2, order  # project p2 does not wait behind all of p1's queue
        await engine.stop()

    run(main())


def test_eog_token_is_never_emitted() -> None:
    assert FakeModel().piece(EOG) == b""


class FailingConstraint:
    """Stands in for `GrammarConstraint`: the first `succeed` are built, later ones fail as llama.cpp can."""

    built: list[FailingConstraint] = []

    def __init__(self, vocab: object, grammar: str, *, lazy_trigger: str | None = None, succeed: int = 0) -> None:
        if len(FailingConstraint.built) >= succeed:
            raise GrammarError("The grammar could not be parsed.")
        self.closed = False
        FailingConstraint.built.append(self)

    def close(self) -> None:
        self.closed = True


def test_a_request_that_fails_after_taking_its_queue_place_gives_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    FailingConstraint.built = []

    async def main() -> None:
        model = FakeModel()
        model.gate = threading.Event()  # decode blocks: nothing leaves the queue by itself
        engine = make_engine(model, slots=2, max_queued=2, max_queued_per_organization=2, max_queued_per_project=2)
        await engine.start()
        grammar = SamplingParams(max_tokens=2, temperature=0, grammar='root ::= "a"')
        monkeypatch.setattr("modelhost.engine.llamacpp.GrammarConstraint", FailingConstraint)
        for i in range(5):  # more failures than the queue has places
            with pytest.raises(GrammarError):
                engine.submit(GenerationRequest(f"bad-{i}", [1], grammar))
        assert engine.state()["queue_depth"] == 0
        # n = 2: the first choice's constraint is built, the second's fails; the first is closed.
        FailingConstraint.built = []
        monkeypatch.setattr("modelhost.engine.llamacpp.GrammarConstraint", functools.partial(FailingConstraint, succeed=1))
        with pytest.raises(GrammarError):
            engine.submit(GenerationRequest("bad-n2", [1], grammar, n=2))
        assert [c.closed for c in FailingConstraint.built] == [True] and engine.state()["queue_depth"] == 0
        # The queue still has all its room: the first request takes the slot, two more wait, a
        # fourth finds the queue full.
        gens = [engine.submit(request([1], max_tokens=2, rid="ok-0"))]
        await asyncio.sleep(0.05)
        gens += [engine.submit(request([1], max_tokens=2, rid=f"ok-{i}")) for i in (1, 2)]
        with pytest.raises(EngineOverloaded):
            engine.submit(request([1], max_tokens=2, rid="ok-3"))
        model.gate.set()
        for g in gens:
            assert (await drain(g))[1] == {0: "length"}
        await engine.stop()

    run(main())


class SlowConstraint:
    """Stands in for `GrammarConstraint`: allows every token, and each step costs 0.05 s of the decode thread."""

    def __init__(self, vocab: object, grammar: str, *, lazy_trigger: str | None = None) -> None:
        self.spent = 0.0

    def allows(self, token: int) -> bool:
        self.spent += 0.05
        return True

    def mask(self, scores: object) -> None:
        self.spent += 0.05

    def accept(self, token: int) -> None:
        self.spent += 0.05

    def close(self) -> None:
        pass


def test_a_choice_whose_grammar_exceeds_its_decode_thread_budget_ends_with_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grammar that costs the shared decode thread too much is stopped (issue #12 item 1): its
    choice ends with `length`, while a request without a grammar runs to its own end."""
    monkeypatch.setattr("modelhost.engine.llamacpp.GrammarConstraint", SlowConstraint)
    monkeypatch.setattr("modelhost.engine.llamacpp.GRAMMAR_SECONDS_PER_CHOICE", 0.25)

    async def main() -> None:
        engine = make_engine(FakeModel())
        await engine.start()
        costly = GenerationRequest("costly", [0, 1, 2], SamplingParams(max_tokens=40, temperature=0, grammar='root ::= "a"'))
        texts, reasons = await drain(engine.submit(costly))
        assert reasons == {0: "length"} and 1 <= len(texts[0]) < 5  # 0.1 s a token: cut after 3
        texts, reasons = await drain(engine.submit(request([0, 1, 2], max_tokens=8, rid="free")))
        assert reasons == {0: "length"} and len(texts[0]) == 8
        await engine.stop()

    run(main())
