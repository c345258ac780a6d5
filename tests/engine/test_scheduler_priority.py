"""Batch lines in the llama.cpp engine: interactive requests go first, and one that finds no free slot
takes a running batch request's slot at the next step; the batch request resumes later by
recomputing its KV, its text exactly what it would have been without the pause.

The model here predicts from the whole KV sequence (a checksum of every token at every position
before the row), so a resumed sequence whose KV was not rebuilt exactly (a token missing, a stale
one left behind, a wrong position) continues differently from its undisturbed run.
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from modelhost.engine.base import ChoiceFinished, GenerationRequest, Priority, SamplingParams, TextDelta
from modelhost.engine.llamacpp import LlamaCppEngine

from .fake_llama import EOG, VOCAB, FakeContext, FakeModel


class KVContext(FakeContext):
    """A fake context that keeps each sequence's KV (position → token) and predicts from all of it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.kv: dict[int, dict[int, int]] = {}

    def trim(self, seq: int, keep: int) -> None:
        super().trim(seq, keep)
        self.kv[seq] = {p: t for p, t in self.kv.get(seq, {}).items() if p < keep}

    def copy_sequence(self, src: int, dst: int) -> None:
        super().copy_sequence(src, dst)
        self.kv[dst] = dict(self.kv.get(src, {}))

    def decode(self) -> int:
        if self.gate is not None:
            self.gate.wait(5)
        import time

        time.sleep(self.step_seconds)
        self.batches.append(list(self._batch))
        top: dict[int, int] = {}
        for token, pos, seq, _ in self._batch:
            self.kv.setdefault(seq, {})[pos] = token
            top[seq] = max(top.get(seq, -1), pos)
        for seq, last in top.items():
            assert max(self.kv[seq]) == last, f"sequence {seq} holds stale KV past position {last}"
        self._logits = {}
        for row, (_token, pos, seq, want) in enumerate(self._batch):
            if want:
                history = [self.kv[seq][p] for p in range(pos + 1)]  # a KeyError: a hole in the KV
                nxt = sum((p + 1) * t for p, t in enumerate(history)) % (VOCAB - 1)
                logits = np.full(VOCAB, -10.0, dtype=np.float32)
                logits[EOG if self.eog_after is not None and pos >= self.eog_after else nxt] = 10.0
                self._logits[row] = logits
        return 0


class KVModel(FakeModel):
    def new_context(self, options) -> FakeContext:  # type: ignore[no-untyped-def]
        self.context = KVContext(options.batch_tokens, self.step_seconds, self.eog_after, gate=self.gate)
        return self.context


def make_engine(model: FakeModel, *, slots: int = 1, batch_tokens: int = 64, reserve: int = 0) -> LlamaCppEngine:
    """An engine whose batch jobs may take every slot unless `reserve` says otherwise: most tests
    here are about preemption, which the reserve (tested below) makes rarer."""
    return LlamaCppEngine(
        model, model_id="fake", slots=slots, slot_context=1024, batch_tokens=batch_tokens, threads=1, flash_attention=False,  # type: ignore[arg-type]
        batch_reserved_slots=reserve,
    )


def request(prompt: list[int], *, rid: str, max_tokens: int = 20, n: int = 1, batch: bool = False, scope: str = "org-a",
            seed: int | None = None, temperature: float = 0.0) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    priority = Priority.BATCH if batch else Priority.INTERACTIVE
    return GenerationRequest(rid, prompt, sampling, n=n, cache_scope=scope, priority=priority)


async def drain(generation, finished: list[str] | None = None, rid: str = "") -> dict[int, str]:  # type: ignore[no-untyped-def]
    texts: dict[int, str] = {}
    async for event in generation:
        if isinstance(event, TextDelta):
            texts[event.index] = texts.get(event.index, "") + event.text
        elif isinstance(event, ChoiceFinished):
            assert event.reason == "length"
    if finished is not None:
        finished.append(rid)
    return texts


async def first_text(generation, texts: dict[int, str], count: int):  # type: ignore[no-untyped-def]
    """Read `count` text events of `generation` into `texts`; returns its iterator, to drain the rest
    with (an abandoned iterator would cancel the generation)."""
    iterator = generation.__aiter__()
    while count:
        event = await iterator.__anext__()
        if isinstance(event, TextDelta):
            texts[event.index] = texts.get(event.index, "") + event.text
            count -= 1
    return iterator


async def alone(prompt: list[int], **kw: object) -> dict[int, str]:
    """What the request generates on an engine of its own: the text a preempted run must match."""
    engine = make_engine(KVModel(), slots=kw.pop("slots", 1), batch_tokens=kw.pop("batch_tokens", 64))  # type: ignore[arg-type]
    await engine.start()
    try:
        return await drain(engine.submit(request(prompt, rid="alone", **kw)))  # type: ignore[arg-type]
    finally:
        await engine.stop()


BATCH_PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


def test_an_interactive_request_preempts_a_running_batch_request_whose_text_is_unchanged() -> None:
    async def main() -> None:
        expected = await alone(BATCH_PROMPT, max_tokens=40, batch=True)
        model = KVModel(step_seconds=0.004)
        engine = make_engine(model, slots=1)
        await engine.start()
        finished: list[str] = []
        line = engine.submit(request(BATCH_PROMPT, rid="line", max_tokens=40, batch=True))
        texts: dict[int, str] = {}
        rest_of_line = await first_text(line, texts, 5)  # it runs: five tokens out
        chat = engine.submit(request([7, 7, 7], rid="chat", max_tokens=6))
        reading = asyncio.ensure_future(drain(rest_of_line, finished, "line"))
        await drain(chat, finished, "chat")
        rest = await reading
        assert finished == ["chat", "line"]
        assert texts[0] + rest[0] == expected[0]  # nothing repeated, nothing lost, nothing different
        assert line.preemptions == 1  # type: ignore[attr-defined]
        assert line.completion_tokens == 40 and engine.state()["queue_depth"] == 0
        await engine.stop()

    asyncio.run(main())


def test_a_batch_request_preempted_while_prefilling_starts_its_prefill_over() -> None:
    long_prompt = [(i * 7) % 50 for i in range(120)]

    async def main() -> None:
        expected = await alone(long_prompt, max_tokens=10, batch=True, batch_tokens=8)
        model = KVModel(step_seconds=0.003)
        engine = make_engine(model, slots=1, batch_tokens=8)  # 15 steps of prefill
        await engine.start()
        line = engine.submit(request(long_prompt, rid="line", max_tokens=10, batch=True))
        await asyncio.sleep(0.015)
        chat = engine.submit(request([1, 2], rid="chat", max_tokens=3))
        finished: list[str] = []
        results = await asyncio.gather(drain(line, finished, "line"), drain(chat, finished, "chat"))
        assert finished == ["chat", "line"] and results[0] == expected
        assert line.preemptions == 1  # type: ignore[attr-defined]
        await engine.stop()

    asyncio.run(main())


def test_every_choice_of_a_preempted_batch_request_resumes_where_it_was() -> None:
    async def main() -> None:
        kw = dict(max_tokens=30, n=2, batch=True, seed=11, temperature=0.7)
        expected = await alone(BATCH_PROMPT, slots=2, **kw)  # type: ignore[arg-type]
        model = KVModel(step_seconds=0.004)
        engine = make_engine(model, slots=2)
        await engine.start()
        line = engine.submit(request(BATCH_PROMPT, rid="line", **kw))  # type: ignore[arg-type]
        texts: dict[int, str] = {}
        rest_of_line = await first_text(line, texts, 6)
        chat = engine.submit(request([5, 5], rid="chat", max_tokens=5))
        finished: list[str] = []
        rest, _ = await asyncio.gather(drain(rest_of_line, finished, "line"), drain(chat, finished, "chat"))
        assert finished == ["chat", "line"] and line.preemptions == 1  # type: ignore[attr-defined]
        assert {i: texts.get(i, "") + rest.get(i, "") for i in (0, 1)} == expected
        await engine.stop()

    asyncio.run(main())


def test_waiting_interactive_requests_are_admitted_before_waiting_batch_requests() -> None:
    async def main() -> None:
        engine = make_engine(KVModel(step_seconds=0.003), slots=1)
        await engine.start()
        finished: list[str] = []
        first = engine.submit(request([1], rid="first", max_tokens=15))
        line = engine.submit(request([2], rid="line", max_tokens=5, batch=True))
        later = engine.submit(request([3], rid="later", max_tokens=5))
        await asyncio.gather(drain(first, finished, "first"), drain(line, finished, "line"), drain(later, finished, "later"))
        assert finished == ["first", "later", "line"]
        assert line.preemptions == 0  # type: ignore[attr-defined]  # it never ran before them
        await engine.stop()

    asyncio.run(main())


def test_no_batch_request_is_preempted_when_that_would_not_make_room() -> None:
    async def main() -> None:
        model = KVModel(step_seconds=0.003)
        engine = make_engine(model, slots=2)
        await engine.start()
        finished: list[str] = []
        chat = engine.submit(request([1], rid="chat", max_tokens=25))
        line = engine.submit(request([2], rid="line", max_tokens=40, batch=True))
        await asyncio.sleep(0.02)
        wide = engine.submit(request([3], rid="wide", max_tokens=5, n=2))  # needs both slots: one is interactive
        await asyncio.sleep(0.02)
        assert line.preemptions == 0  # type: ignore[attr-defined]  # preempting it alone would not let `wide` in
        await asyncio.gather(drain(chat, finished, "chat"), drain(line, finished, "line"), drain(wide, finished, "wide"))
        assert finished == ["chat", "wide", "line"]  # once `chat` ended, `line` made way for `wide`
        assert line.preemptions == 1  # type: ignore[attr-defined]
        await engine.stop()

    asyncio.run(main())


def test_a_preempted_batch_request_cancelled_while_it_waits_gives_its_place_back() -> None:
    async def main() -> None:
        engine = make_engine(KVModel(step_seconds=0.004), slots=1)
        await engine.start()
        line = engine.submit(request(BATCH_PROMPT, rid="line", max_tokens=60, batch=True))
        reader = await first_text(line, {}, 3)
        chat = engine.submit(request([7], rid="chat", max_tokens=20))
        chat_text = asyncio.ensure_future(drain(chat))
        await asyncio.sleep(0.02)
        assert line.preemptions == 1  # type: ignore[attr-defined]
        line.cancel()
        await chat_text
        await reader.aclose()
        await asyncio.sleep(0.02)
        state = engine.state()
        assert state["queue_depth"] == 0 and state["slots_busy"] == 0
        await engine.stop()

    asyncio.run(main())


def test_the_pipeline_marks_a_batch_principals_request_batch_priority() -> None:
    # GenerationRequest's default is interactive; the pipeline sets BATCH from `Principal.is_batch`.
    base = GenerationRequest("r", [1], SamplingParams(max_tokens=1))
    assert base.priority is Priority.INTERACTIVE
    assert dataclasses.replace(base, priority=Priority.BATCH).priority is Priority.BATCH


def test_batch_requests_leave_the_reserved_slot_free_for_the_next_interactive_request() -> None:
    async def main() -> None:
        engine = make_engine(KVModel(step_seconds=0.003), slots=3, reserve=1)
        await engine.start()
        lines = [engine.submit(request([2, i], rid=f"line{i}", max_tokens=30, batch=True)) for i in range(3)]
        await asyncio.sleep(0.03)
        running = [job for job in engine._active if job.batch]  # type: ignore[attr-defined]
        assert len(running) == 2  # the third waits: taking the last free slot would leave none
        chat = engine.submit(request([5, 5], rid="chat", max_tokens=5))
        finished: list[str] = []
        await asyncio.gather(drain(chat, finished, "chat"), *(drain(line, finished, f"line{i}") for i, line in enumerate(lines)))
        assert finished[0] == "chat"
        assert all(line.preemptions == 0 for line in lines)  # type: ignore[attr-defined]  # it found the reserved slot
        await engine.stop()

    asyncio.run(main())


def test_a_batch_request_wider_than_the_reserve_leaves_runs_once_every_slot_is_free() -> None:
    async def main() -> None:
        engine = make_engine(KVModel(step_seconds=0.002), slots=2, reserve=1)
        await engine.start()
        texts = await drain(engine.submit(request([4], rid="wide", max_tokens=5, n=2, batch=True)))
        assert set(texts) == {0, 1}
        await engine.stop()

    asyncio.run(main())
