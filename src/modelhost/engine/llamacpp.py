"""The embedded engine: one thread owns the llama.cpp context and batches every live sequence.

Requests enter through a thread-safe inbox; each step of the decode thread builds one batch with
the next token of every generating sequence plus chunks of waiting prompts, decodes it, samples
each sequence with its own sampler, and hands the step's text back to the event loop in one
``call_soon_threadsafe``. A request is admitted when it gets one slot (KV sequence) per choice;
the others wait in a queue that is fair between organizations, then between their projects: each
holds at most its share of the queue (`fair_share`) and admission goes round robin. Cancelled
requests leave at the next step.

Batch lines (`Priority.BATCH`) use only the slots interactive requests leave: none is admitted
while an interactive request waits, nor when it would leave fewer than `batch_reserved_slots`
(default 1) slots free. Without that reserve, under steady interactive load every slot freed for a
moment between two interactive requests went to a batch job, which prefilled and was preempted
by the next arrival a step later: the interactive request waited for that churn each time
(measured: TTFT p95 1.9× beside a batch; bench/README.md). And when an interactive request
finds no free slot while batch sequences hold some (a burst past the reserve), the most recently
admitted batch requests are preempted before the next step (vLLM's recompute preemption): their slots are freed and they wait again, keeping
each choice's sampler (its seeded generator), grammar, stop-string and logprob state; once
readmitted, each choice recomputes the KV of its prompt and the tokens it generated so far
(nothing when its slot's cache still holds them) and continues with the token it had already
sampled. Its text goes on where it stopped: nothing is emitted twice, and the choice samples
what it would have sampled without the pause (up to the float differences any batching brings). A finished slot keeps its KV cache, so the next prompt of the
same organization that starts with the same tokens (a system prompt, a continued conversation)
skips recomputing them.

Why one thread: llama.cpp's OpenMP build keeps a thread team per calling thread; decoding from
several threads was measured at a third of the speed.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from modelhost.engine import chat_prompt
from modelhost.engine.base import (
    ChoiceFinished,
    EngineFailed,
    GenerationRequest,
    Priority,
    PromptLogprobs,
    TextDelta,
    TokenLogprob,
)
from modelhost.engine.chat_template import CHATML, ChatTemplate
from modelhost.engine.fair_share import QueueShares, ShareLimits
from modelhost.engine.generation_task import END, GenerationTask
from modelhost.engine.grammar import GRAMMAR_SECONDS_PER_CHOICE, GrammarConstraint, validate_grammar
from modelhost.engine.llama_model import ContextOptions, LlamaContext, LlamaModel
from modelhost.engine.sampling import TokenSampler, log_softmax_at
from modelhost.engine.stops import TextAssembler

logger = logging.getLogger(__name__)


@dataclass
class _Slot:
    """One KV sequence. `cached` lists the tokens its KV holds, from position 0."""

    seq: int
    cached: list[int] = field(default_factory=list)
    scope: str | None = None
    busy: bool = False
    last_used: float = 0.0


@dataclass
class _Choice:
    index: int
    sampler: TokenSampler
    assembler: TextAssembler
    slot: _Slot | None = None
    constraint: GrammarConstraint | None = None
    next_token: int = -1  # sampled, not yet decoded
    done: bool = False
    held_logprobs: list[TokenLogprob] = field(default_factory=list)
    # After a preemption: the tokens (prompt + generated, without `next_token`) whose KV this
    # choice's slot must hold again before it decodes `next_token`; None once it does.
    replay: list[int] | None = None


class _Work(NamedTuple):
    """One slot's rows in a step: the next token of `choice` (`start` = `end` = 0), a chunk
    [start, end) of the job's prompt (`choice` None), or a chunk of `choice.replay` (`replay`)."""

    slot: _Slot
    job: _Job
    choice: _Choice | None
    start: int
    end: int
    replay: bool = False


class _Outbox:
    """The events of one pass of the decode loop, handed to each event loop in a single call.

    One wake-up per step instead of one per token: the event loop, and a streaming client behind
    it, wake once per step rather than once per sequence, and each wake-up on two cores takes a
    core from llama.cpp's threads. Used by the decode thread only.
    """

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[object], object]]] = {}

    def put(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[object], item: object) -> None:
        self._pending.setdefault(loop, []).append((events, item))

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is left to read these events
                logger.debug("dropped %d events for a closed event loop", len(items))


def _deliver(items: list[tuple[asyncio.Queue[object], object]]) -> None:
    for events, item in items:
        events.put_nowait(item)


class _Job(GenerationTask):
    """A submitted request and all its state: iterate it for events; `cancel()` (or closing early)
    frees its slots. Its fields belong to the decode thread once it is in the inbox; events reach
    the request's event loop when the decode loop's pass ends (`emit`)."""

    def __init__(self, request: GenerationRequest, choices: list[_Choice], outbox: _Outbox, wake: threading.Event) -> None:
        super().__init__(request.n)
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.choices = choices
        self.outbox = outbox
        self.wake = wake
        self.prefilled = 0  # prompt tokens already in the first choice's KV
        self.cancelled = threading.Event()
        self.admitted = False
        self.finished = False
        self.prompt_logprobs: list[TokenLogprob] = []
        self.placed = False  # it had slots once: a readmission is a resumption
        self.preemptions = 0

    @property
    def batch(self) -> bool:
        return self.request.priority is Priority.BATCH

    @property
    def slots_needed(self) -> int:
        """Slots its admission takes: one per choice, or once it has begun, per choice still going."""
        return sum(1 for c in self.choices if not c.done) if self.placed else self.request.n

    def emit(self, item: object) -> None:
        """Queue an event from the decode thread; it reaches the request when the loop's pass ends."""
        self.outbox.put(self.loop, self.events, item)

    def cancel(self) -> None:
        if not self.finished:
            self.cancelled.set()
            self.wake.set()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LlamaCppEngine:
    """Serves one GGUF model with continuous batching over `slots` sequences."""

    forwards_requests = False  # it tokenizes and templates prompts itself

    def __init__(
        self,
        model: LlamaModel,
        *,
        model_id: str,
        slots: int,
        slot_context: int,
        batch_reserved_slots: int = 1,
        batch_tokens: int,
        threads: int,
        flash_attention: bool,
        kv_unified: bool = False,
        max_queued: int = 256,
        max_queued_per_organization: int | None = None,
        max_queued_per_project: int | None = None,
        prefix_reuse: bool = True,
        share_prefix_across_scopes: bool = False,
    ) -> None:
        self.model_id = model_id
        self.model = model
        self.context_length = min(slot_context, model.train_context or slot_context)
        self._options = ContextOptions(
            n_seq=slots,
            seq_context=self.context_length,
            batch_tokens=max(batch_tokens, slots),
            threads=threads,
            flash_attention=flash_attention,
            kv_unified=kv_unified,
        )
        bos = model.token_text(model.bos_id)
        eos = model.token_text(model.eos_id)
        self._template = ChatTemplate(model.chat_template() or CHATML, bos, eos)
        self._prefix_reuse = prefix_reuse
        self._share_prefix = share_prefix_across_scopes
        self._inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._outbox = _Outbox()
        self._wake = threading.Event()
        self._waiting: list[_Job] = []
        self._active: list[_Job] = []
        self._slots = [_Slot(seq) for seq in range(slots)]
        # Slots a batch job must leave free (at least one slot is always theirs to take).
        self._batch_reserve = max(0, min(batch_reserved_slots, slots - 1))
        # Jobs submitted and not yet admitted (inbox + waiting), by organization and project.
        self._queue = QueueShares(ShareLimits.of(max_queued, max_queued_per_organization, max_queued_per_project))
        self._thread: threading.Thread | None = None
        self._running = False
        self._tokens_window: collections.deque[tuple[float, int]] = collections.deque()
        self._reused_total = 0
        self._admissions = 0
        self._admitted_at: dict[object, int] = {}  # organization, (organization, project) → admission counter when last served

    # -- the public interface ---------------------------------------------------------------
    @property
    def max_n(self) -> int:
        return self._options.n_seq

    @property
    def vocab_size(self) -> int:
        return self.model.n_vocab

    @property
    def start_token(self) -> int:
        """What an empty prompt is made of: the model's beginning-of-text token."""
        return self.model.bos_id if self.model.bos_id >= 0 else self.model.eos_id

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.model.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def render_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> str:
        return self._template.render(messages, tools)

    def tokenize_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> list[int]:
        """The conversation as prompt tokens: control tokens only where the template wrote them (chat_prompt)."""
        rendered = chat_prompt.render(self._template.render, messages, tools, self._controls)
        model = self.model
        return chat_prompt.tokenize(
            rendered,
            self._controls,
            whole=model.tokenize,
            text_only=lambda text: model.tokenize(text, add_special=False, parse_special=False),
            start=[model.bos_id] if model.add_bos else [],
        )

    @functools.cached_property
    def _controls(self) -> chat_prompt.ControlTokens:
        return chat_prompt.ControlTokens(self.model.control_tokens())

    @property
    def template_supports_tools(self) -> bool:
        return self._template.supports_tools

    def check_grammar(self, grammar: str) -> None:
        """Raise `GrammarError` if llama.cpp cannot parse `grammar` (call off the event loop)."""
        validate_grammar(self.model.vocab, grammar)

    def submit(self, request: GenerationRequest) -> GenerationTask:
        """Queue `request`; raises `EngineOverloaded` when the wait queue is full.

        The later parts of a multi-prompt request join their first part instead of competing with
        it for the last queue place: at most `max_queued` requests wait, each of up to MAX_PROMPTS jobs.
        An organization, and a project in it, may hold only its share of the queue (`fair_share`).
        """
        assert 1 <= request.n <= self._options.n_seq, "n is capped below the slot count by the API layer"
        assert request.prompt_tokens, "a prompt has at least one token"
        self._queue.take(request.cache_scope, request.project, joins_admitted=request.part > 0)
        # Until the job is in the inbox its place is this call's to give back: once there, the
        # decode thread gives it back (at admission or at the end). Any failure in between (a grammar
        # llama.cpp will not build, no running loop) would otherwise hold the place forever.
        constraints: list[GrammarConstraint] = []
        try:
            sampling = request.sampling
            choices: list[_Choice] = []
            for i in range(request.n):
                constraint = None
                if sampling.grammar:
                    constraint = GrammarConstraint(self.model.vocab, sampling.grammar, lazy_trigger=sampling.grammar_trigger)
                    constraints.append(constraint)
                sampler = TokenSampler(sampling, self.model.n_vocab, i)
                choices.append(_Choice(i, sampler, TextAssembler(sampling.stop), constraint=constraint))
            job = _Job(request, choices, self._outbox, self._wake)
        except BaseException:
            for constraint in constraints:
                constraint.close()  # never seen by the decode thread
            self._queue.give_back(request.cache_scope, request.project)
            raise
        self._inbox.put(job)
        self._wake.set()
        return job

    @property
    def alive(self) -> bool:
        """Whether the decode thread runs (/health answers 503 once it has ended)."""
        return self._thread is not None and self._thread.is_alive()

    def state(self) -> dict[str, object]:
        now = time.monotonic()
        window = [(t, n) for t, n in list(self._tokens_window) if now - t <= 10.0]
        return {
            "model": self.model_id,
            "slots_total": len(self._slots),
            "slots_busy": sum(1 for s in self._slots if s.busy),
            "queue_depth": self._queue.held,
            "tokens_per_second": round(sum(n for _, n in window) / 10.0, 1),
            "prompt_tokens_reused": self._reused_total,
        }

    async def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._running = True
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="llama-decode", daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait)
        if failure:
            raise failure[0]

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # -- the decode thread ------------------------------------------------------------------
    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            ctx = self.model.new_context(self._options)
        except BaseException as exc:  # reported to start()
            failure.append(exc)
            ready.set()
            return
        ready.set()
        try:
            while self._running:
                self._take_inbox(block=not self._active and not self._waiting)
                self._drop_cancelled(ctx)
                self._admit(ctx)
                if self._active:
                    self._step(ctx)
                self._outbox.flush()
        finally:
            for job in [*self._active, *self._waiting]:
                self._finish(ctx, job, EngineFailed("The engine is shutting down."))
            self._outbox.flush()
            ctx.close()

    def _take_inbox(self, *, block: bool) -> None:
        if block:
            self._wake.wait(timeout=0.5)
        self._wake.clear()
        while True:
            try:
                self._waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _drop_cancelled(self, ctx: LlamaContext) -> None:
        for job in [j for j in self._waiting if j.cancelled.is_set()]:
            self._waiting.remove(job)
            self._finish(ctx, job, None)
        for job in [j for j in self._active if j.cancelled.is_set()]:
            self._finish(ctx, job, None)

    @staticmethod
    def _tenant(job: _Job) -> tuple[str, str]:
        return job.request.cache_scope, job.request.project

    def _next_fair(self, waiting: list[_Job]) -> _Job:
        """Round robin between organizations, then between their projects: the organization with the
        fewest running jobs, among those the one served least recently; within it the project chosen
        the same way; its oldest waiting job (of `waiting`)."""
        running: collections.Counter[object] = collections.Counter()
        for j in self._active:
            running[j.request.cache_scope] += 1
            running[self._tenant(j)] += 1

        def key(job: _Job) -> tuple[int, int, int, int]:
            organization, project = job.request.cache_scope, self._tenant(job)
            return (
                running[organization],
                self._admitted_at.get(organization, -1),
                running[project],
                self._admitted_at.get(project, -1),
            )

        return min(waiting, key=key)  # min is stable: FIFO among equals

    def _admit(self, ctx: LlamaContext) -> None:
        while self._waiting:
            # Interactive requests first: no batch job is admitted while one waits.
            interactive = [j for j in self._waiting if not j.batch]
            job = self._next_fair(interactive or self._waiting)
            needed = job.slots_needed
            free = [s for s in self._slots if not s.busy]
            if len(free) < needed and not job.batch:
                self._preempt_batch(ctx, needed - len(free))
                free = [s for s in self._slots if not s.busy]
            if len(free) < needed:
                return  # it waits for slots rather than being overtaken by smaller jobs forever
            if job.batch and len(free) - needed < self._batch_reserve and len(free) < len(self._slots):
                # It would take the slots kept for the next interactive request (see the docstring);
                # a job wider than what the reserve leaves still runs once every slot is free.
                return
            self._waiting.remove(job)
            self._queue.give_back(job.request.cache_scope, job.request.project)
            self._admissions += 1
            self._admitted_at[job.request.cache_scope] = self._admitted_at[self._tenant(job)] = self._admissions
            if job.placed and job.prefilled == len(job.request.prompt_tokens):
                self._resume(ctx, job, free)
            else:
                self._place(ctx, job, free)
            job.admitted = job.placed = True
            self._active.append(job)

    def _preempt_batch(self, ctx: LlamaContext, wanted: int) -> None:
        """Free `wanted` slots for an interactive job by preempting running batch jobs, the most
        recently admitted first (the least work to redo), or none if all of theirs would not do."""
        victims: list[_Job] = []
        freed = 0
        for job in reversed(self._active):
            if freed >= wanted:
                break
            if job.batch:
                victims.append(job)
                freed += sum(1 for c in job.choices if c.slot is not None)
        if freed < wanted:
            return  # the interactive job waits for interactive slots; batch keeps the rest meanwhile
        for job in victims:
            self._preempt(ctx, job)

    def _preempt(self, ctx: LlamaContext, job: _Job) -> None:
        """Take `job`'s slots back and put it first in the queue again, its choices' state kept.

        Each slot keeps its KV cache (reused if it is still there when the job resumes). A job
        still prefilling its prompt starts its prefill over; a generating one replays each
        choice's tokens (`_Choice.replay`) once it is readmitted.
        """
        self._active.remove(job)
        job.admitted = False
        job.preemptions += 1
        # Back to waiting: it holds a queue place again, never refused (it was admitted once).
        self._queue.take(job.request.cache_scope, job.request.project, joins_admitted=True)
        generating = job.prefilled == len(job.request.prompt_tokens)
        if not generating:
            job.prefilled = 0
            job.prompt_logprobs.clear()  # emitted only when the prefill ends: recomputed then
        now = time.monotonic()
        for choice in job.choices:
            slot = choice.slot
            if slot is None:
                continue
            if generating and not choice.done:
                # What its KV held, or was to hold: a replay cut short by this preemption goes on from there.
                choice.replay = choice.replay if choice.replay is not None else list(slot.cached)
            slot.busy = False
            slot.last_used = now
            choice.slot = None
        self._waiting.insert(0, job)  # the oldest among equals: it resumes before later batch jobs
        logger.debug("preempted batch request %s for an interactive one", job.request.request_id)

    def _resume(self, ctx: LlamaContext, job: _Job, free: list[_Slot]) -> None:
        """Give each unfinished choice of a preempted job a slot, the one whose cache holds most of
        its `replay` (its own, if nobody took it since); the rest is recomputed by `_step`."""
        available = list(free)
        for choice in job.choices:
            if choice.done:
                continue
            assert choice.replay is not None, "a preempted generating choice knows what to replay"
            tokens = choice.replay

            def shared(slot: _Slot, tokens: list[int] = tokens) -> int:
                if not (self._share_prefix or slot.scope == job.request.cache_scope):
                    return 0
                return _common_prefix(slot.cached, tokens)

            slot = min(available, key=lambda s: (-shared(s), s.last_used))
            available.remove(slot)
            keep = shared(slot)
            ctx.trim(slot.seq, keep)
            del slot.cached[keep:]
            slot.busy = True
            slot.scope = job.request.cache_scope
            choice.slot = slot
            if keep == len(tokens):
                choice.replay = None  # its KV is all there: it decodes `next_token` at the next step

    def _place(self, ctx: LlamaContext, job: _Job, free: list[_Slot]) -> None:
        """Give each choice a slot; the first gets the one whose cache shares the longest prefix."""
        prompt = job.request.prompt_tokens
        reusable = self._prefix_reuse and not job.request.sampling.prompt_logprobs

        def shared(slot: _Slot) -> int:
            if not reusable or not (self._share_prefix or slot.scope == job.request.cache_scope):
                return 0
            return _common_prefix(slot.cached, prompt)

        def worth(slot: _Slot) -> int:
            # A slot lends its prefix only if that keeps more of its cache than it throws away: a
            # prompt sharing a few tokens (a chat template's opening) with another conversation's
            # slot must not evict that conversation while an empty or stale slot is free (measured:
            # two conversations alternating on 4 slots evicted each other every turn, bench/README.md).
            kept = shared(slot)
            return kept if kept >= len(slot.cached) - kept else 0

        # The slot worth most; among none worth anything, an empty one, else the least recently used.
        # (Each slot's prefix is compared once: a prompt may be thousands of tokens.)
        worths = {slot.seq: worth(slot) for slot in free}
        ranked = sorted(free, key=lambda s: (-worths[s.seq], worths[s.seq] == 0 and bool(s.cached), s.last_used))
        primary = ranked[0]
        keep = min(shared(primary), len(prompt) - 1)  # at least one prompt token is decoded for logits
        ctx.trim(primary.seq, keep)
        del primary.cached[keep:]
        job.prefilled = keep
        if not job.placed:  # a prefill started over after a preemption reuses its own KV: no cache hit
            job.cached = keep
            self._reused_total += keep
        # The other choices take the least useful free slots; their KV is copied after prefill.
        others = sorted(ranked[1:], key=lambda s: (len(s.cached), s.last_used))[: job.request.n - 1]
        for choice, slot in zip(job.choices, [primary, *others]):
            slot.busy = True
            slot.scope = job.request.cache_scope
            choice.slot = slot

    def _step(self, ctx: LlamaContext) -> None:
        ctx.clear_batch()
        # Rows go into the batch in KV-sequence order: with a KV stream per slot, llama.cpp decodes
        # a batch whose streams come out of order much more slowly (measured here at 16 sequences:
        # ~110 ms a step in admission order against ~70 ms in slot order).
        work: list[_Work] = []
        for job in self._active:
            if job.prefilled == len(job.request.prompt_tokens):
                for choice in job.choices:
                    if not choice.done and choice.replay is None:
                        assert choice.slot is not None
                        work.append(_Work(choice.slot, job, choice, 0, 0))
        room = ctx.capacity - len(work)
        for job in self._active:
            prompt = job.request.prompt_tokens
            if room <= 0:
                break
            if job.prefilled < len(prompt):
                assert job.choices[0].slot is not None
                end = min(len(prompt), job.prefilled + room)
                work.append(_Work(job.choices[0].slot, job, None, job.prefilled, end))
                room -= end - job.prefilled
                job.prefilled = end
                continue
            for choice in job.choices:  # a resumed job's choices recompute their KV
                if choice.replay is None or choice.done or room <= 0:
                    continue
                assert choice.slot is not None
                start = len(choice.slot.cached)
                end = min(len(choice.replay), start + room)
                work.append(_Work(choice.slot, job, choice, start, end, replay=True))
                room -= end - start
        work.sort(key=lambda w: w.slot.seq)
        decoding: list[tuple[_Job, _Choice, int]] = []
        prefilling: list[tuple[_Job, int, int, dict[int, int]]] = []
        replayed: list[_Choice] = []
        for slot, job, decoded, start, end, replay in work:
            if replay:
                assert decoded is not None and decoded.replay is not None
                tokens = decoded.replay
                for pos in range(start, end):
                    # Logits only for the last row (some llama.cpp builds want one); nothing samples them.
                    ctx.add(tokens[pos], pos, slot.seq, pos == end - 1)
                slot.cached.extend(tokens[start:end])
                if end == len(tokens):
                    replayed.append(decoded)
                continue
            if decoded is not None:
                decoding.append((job, decoded, ctx.add(decoded.next_token, len(slot.cached), slot.seq, True)))
                slot.cached.append(decoded.next_token)
                continue
            prompt = job.request.prompt_tokens
            every = job.request.sampling.prompt_logprobs
            rows = {pos: ctx.add(prompt[pos], pos, slot.seq, every or pos == len(prompt) - 1) for pos in range(start, end)}
            slot.cached.extend(prompt[start:end])
            prefilling.append((job, start, end, rows))
        if ctx.batch_size == 0:
            return
        code = ctx.decode()
        if code != 0:
            logger.error("llama_decode returned %d; failing %d requests", code, len(self._active))
            for job in list(self._active):
                self._finish(ctx, job, EngineFailed(f"decode failed ({code})"), keep_cache=False)
            return
        for choice in replayed:
            choice.replay = None  # its KV holds everything before `next_token` again: it decodes next step
        produced = 0
        for job, start, end, rows in prefilling:
            produced += self._after_prefill(ctx, job, start, end, rows)
        for job, choice, row in decoding:
            if not job.finished:
                produced += self._advance(job, choice, ctx, row)
        for job in [j for j in self._active if all(c.done for c in j.choices)]:
            self._finish(ctx, job, None)
        if produced:
            now = time.monotonic()
            self._tokens_window.append((now, produced))
            while self._tokens_window and now - self._tokens_window[0][0] > 10.0:
                self._tokens_window.popleft()

    def _after_prefill(self, ctx: LlamaContext, job: _Job, start: int, end: int, rows: dict[int, int]) -> int:
        prompt = job.request.prompt_tokens
        if job.request.sampling.prompt_logprobs:
            top = job.request.sampling.logprobs or 0
            if start == 0:
                job.prompt_logprobs.append(TokenLogprob(prompt[0], self.model.piece(prompt[0]), None))
            for pos in range(start, min(end, len(prompt) - 1)):
                job.prompt_logprobs.append(self._logprob(ctx.logits(rows[pos]), prompt[pos + 1], top))
        if end < len(prompt):
            return 0
        if job.request.sampling.prompt_logprobs:
            job.emit(PromptLogprobs(tuple(job.prompt_logprobs)))
        first = job.choices[0].slot
        assert first is not None
        for choice in job.choices[1:]:
            assert choice.slot is not None
            ctx.trim(choice.slot.seq, 0)
            ctx.copy_sequence(first.seq, choice.slot.seq)
            choice.slot.cached = list(first.cached)
        produced = 0
        row = rows[len(prompt) - 1]
        for choice in job.choices:
            if job.request.sampling.max_tokens == 0:  # legacy echo of the prompt alone
                self._end_choice(job, choice, "length")
            else:
                produced += self._advance(job, choice, ctx, row)
        return produced

    def _logprob(self, logits, token: int, top: int) -> TokenLogprob:  # type: ignore[no-untyped-def]
        value, best = log_softmax_at(logits, token, top)
        return TokenLogprob(token, self.model.piece(token), value, tuple((t, self.model.piece(t), lp) for t, lp in best))

    def _advance(self, job: _Job, choice: _Choice, ctx: LlamaContext, row: int) -> int:
        """Sample the next token of `choice` from logits `row`: emit its text or end the choice.

        Returns 1 when a completion token was produced.
        """
        logits = ctx.logits(row)
        token = choice.sampler.sample(logits, choice.constraint)
        if token < 0 or self.model.is_end_of_generation(token):
            self._end_choice(job, choice, "stop")
            return 0
        job.generated[choice.index] += 1
        choice.sampler.accept(token)
        if choice.constraint is not None:
            choice.constraint.accept(token)
        if job.request.sampling.logprobs is not None:
            choice.held_logprobs.append(self._logprob(logits, token, job.request.sampling.logprobs))
        text = choice.assembler.feed(self.model.piece(token))
        if text:
            job.emit(TextDelta(choice.index, text, tuple(choice.held_logprobs)))
            choice.held_logprobs.clear()
        slot = choice.slot
        assert slot is not None
        if choice.assembler.stopped:
            self._end_choice(job, choice, "stop")
        elif job.generated[choice.index] >= job.request.sampling.max_tokens or len(slot.cached) >= self.context_length:
            self._end_choice(job, choice, "length")
        elif choice.constraint is not None and choice.constraint.spent > GRAMMAR_SECONDS_PER_CHOICE:
            # Its grammar has held the decode thread that every tenant shares long enough.
            logger.warning("request %s: its grammar used %.1f s of the decode thread; the choice ends", job.request.request_id, choice.constraint.spent)
            self._end_choice(job, choice, "length")
        else:
            choice.next_token = token  # decoded at the next step
        return 1

    def _end_choice(self, job: _Job, choice: _Choice, reason: str) -> None:
        tail = choice.assembler.flush()
        if tail or choice.held_logprobs:
            job.emit(TextDelta(choice.index, tail, tuple(choice.held_logprobs)))
            choice.held_logprobs.clear()
        choice.done = True
        job.emit(ChoiceFinished(choice.index, reason, job.generated[choice.index]))

    def _finish(self, ctx: LlamaContext, job: _Job, error: Exception | None, *, keep_cache: bool = True) -> None:
        """Release the job's slots (keeping their KV for reuse) and close its event stream."""
        if job.finished:
            return
        job.finished = True
        if job in self._active:
            self._active.remove(job)
        for choice in job.choices:
            if choice.constraint is not None:
                choice.constraint.close()
                choice.constraint = None
        if job.admitted:
            now = time.monotonic()
            for choice in job.choices:
                slot = choice.slot
                if slot is None:
                    continue
                if not keep_cache or not self._prefix_reuse:
                    ctx.trim(slot.seq, 0)
                    slot.cached.clear()
                slot.busy = False
                slot.last_used = now
                choice.slot = None
        else:
            self._queue.give_back(job.request.cache_scope, job.request.project)
        if error is not None:
            job.emit(error)
        job.emit(END)
