"""The embedded engine: one thread owns the llama.cpp context and batches every live sequence.

Requests enter through a thread-safe inbox; each step of the decode thread builds one batch with
the next token of every generating sequence plus chunks of waiting prompts, decodes it, samples
each sequence with its own sampler, and hands text back to the event loop with
``call_soon_threadsafe``. A request is admitted when it gets one slot (KV sequence) per choice;
the others wait in FIFO order. Cancelled requests leave at the next step.

Why one thread: llama.cpp's OpenMP build keeps a thread team per calling thread; decoding from
several threads was measured at a third of the speed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from modelhost.engine.base import (
    ChoiceFinished,
    EngineEvent,
    EngineFailed,
    EngineOverloaded,
    GenerationRequest,
    TextDelta,
)
from modelhost.engine.chat_template import CHATML, ChatTemplate
from modelhost.engine.llama_model import ContextOptions, LlamaContext, LlamaModel
from modelhost.engine.sampling import TokenSampler
from modelhost.engine.stops import TextAssembler

logger = logging.getLogger(__name__)

_END = object()  # sentinel on a job's event queue: no more events


@dataclass
class _Choice:
    index: int
    sampler: TokenSampler
    assembler: TextAssembler
    slot: int = -1
    pos: int = 0
    next_token: int = -1
    generated: int = 0
    done: bool = False


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[object]
    choices: list[_Choice]
    prefilled: int = 0  # prompt tokens already decoded into the first choice's slot
    cancelled: threading.Event = field(default_factory=threading.Event)
    admitted: bool = False
    finished: bool = False

    def emit(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    @property
    def completion_tokens(self) -> int:
        return sum(c.generated for c in self.choices)


class Generation:
    """A submitted request: iterate it for events; `cancel()` (or closing early) frees its slots."""

    def __init__(self, job: _Job, wake: threading.Event) -> None:
        self._job = job
        self._wake = wake

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far over all choices (exact once the stream has ended)."""
        return self._job.completion_tokens

    def cancel(self) -> None:
        if not self._job.finished:
            self._job.cancelled.set()
            self._wake.set()

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        try:
            while True:
                item = await self._job.events.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self.cancel()


class LlamaCppEngine:
    """Serves one GGUF model with continuous batching over `slots` sequences."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        model_id: str,
        slots: int,
        slot_context: int,
        batch_tokens: int,
        threads: int,
        flash_attention: bool,
        max_queued: int = 256,
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
        )
        bos = model.token_text(model.bos_id)
        eos = model.token_text(model.eos_id)
        self._template = ChatTemplate(model.chat_template() or CHATML, bos, eos)
        self._inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._active: list[_Job] = []
        self._free_slots = list(range(slots))
        self._max_queued = max_queued
        self._queued = 0  # jobs submitted and not yet admitted (inbox + waiting)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running = False
        self._tokens_window: collections.deque[tuple[float, int]] = collections.deque()

    # -- the public interface ---------------------------------------------------------------
    @property
    def max_n(self) -> int:
        return self._options.n_seq

    @property
    def vocab_size(self) -> int:
        return self.model.n_vocab

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def render_chat(self, messages: Sequence[dict[str, object]]) -> str:
        return self._template.render(messages)

    def submit(self, request: GenerationRequest) -> Generation:
        """Queue `request`; raises `EngineOverloaded` when the wait queue is full."""
        assert request.n <= self._options.n_seq, "n is capped below the slot count by the API layer"
        with self._lock:
            if self._queued >= self._max_queued:
                raise EngineOverloaded("The engine's queue is full.")
            self._queued += 1
        choices = [
            _Choice(i, TokenSampler(request.sampling, self.model.n_vocab, i), TextAssembler(request.sampling.stop))
            for i in range(request.n)
        ]
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue(), choices)
        self._inbox.put(job)
        self._wake.set()
        return Generation(job, self._wake)

    def state(self) -> dict[str, object]:
        now = time.monotonic()
        window = [(t, n) for t, n in list(self._tokens_window) if now - t <= 10.0]
        return {
            "model": self.model_id,
            "slots_total": self._options.n_seq,
            "slots_busy": self._options.n_seq - len(self._free_slots),
            "queue_depth": self._queued,
            "tokens_per_second": round(sum(n for _, n in window) / 10.0, 1),
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
                self._admit()
                if self._active:
                    self._step(ctx)
        finally:
            for job in [*self._active, *self._waiting]:
                self._finish(ctx, job, EngineFailed("The engine is shutting down."))
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

    def _admit(self) -> None:
        # FIFO: the head of the queue waits for enough slots rather than being overtaken.
        while self._waiting and len(self._free_slots) >= self._waiting[0].request.n:
            job = self._waiting.popleft()
            for choice in job.choices:
                choice.slot = self._free_slots.pop()
            job.admitted = True
            with self._lock:
                self._queued -= 1
            self._active.append(job)

    def _step(self, ctx: LlamaContext) -> None:
        ctx.clear_batch()
        decoding: list[tuple[_Job, _Choice, int]] = []
        prefilling: list[tuple[_Job, int | None]] = []
        for job in self._active:
            if job.prefilled == len(job.request.prompt_tokens):
                for choice in job.choices:
                    if not choice.done:
                        row = ctx.add(choice.next_token, choice.pos, choice.slot, True)
                        choice.pos += 1
                        decoding.append((job, choice, row))
        for job in self._active:
            prompt = job.request.prompt_tokens
            room = ctx.capacity - ctx.batch_size
            if job.prefilled == len(prompt) or room <= 0:
                continue
            first = job.choices[0]
            end = min(len(prompt), job.prefilled + room)
            row = None
            for pos in range(job.prefilled, end):
                row = ctx.add(prompt[pos], pos, first.slot, pos == len(prompt) - 1)
            job.prefilled = end
            prefilling.append((job, row if end == len(prompt) else None))
        if ctx.batch_size == 0:
            return
        code = ctx.decode()
        if code != 0:
            logger.error("llama_decode returned %d; failing %d requests", code, len(self._active))
            for job in list(self._active):
                self._finish(ctx, job, EngineFailed(f"decode failed ({code})"))
            return
        produced = 0
        for job, row in prefilling:
            if row is None:
                continue
            logits = ctx.logits(row)
            prompt_len = len(job.request.prompt_tokens)
            for choice in job.choices:
                if choice is not job.choices[0]:
                    ctx.copy_sequence(job.choices[0].slot, choice.slot)
                choice.pos = prompt_len
                produced += self._advance(job, choice, choice.sampler.sample(logits))
        for job, choice, row in decoding:
            if not job.finished:
                produced += self._advance(job, choice, choice.sampler.sample(ctx.logits(row)))
        for job in [j for j in self._active if all(c.done for c in j.choices)]:
            self._finish(ctx, job, None)
        if produced:
            now = time.monotonic()
            self._tokens_window.append((now, produced))
            while self._tokens_window and now - self._tokens_window[0][0] > 10.0:
                self._tokens_window.popleft()

    def _advance(self, job: _Job, choice: _Choice, token: int) -> int:
        """Take a sampled token for `choice`: emit its text or finish the choice. Returns 1 if counted."""
        if self.model.is_end_of_generation(token):
            self._end_choice(job, choice, "stop")
            return 0
        choice.generated += 1
        choice.sampler.accept(token)
        text = choice.assembler.feed(self.model.piece(token))
        if text:
            job.emit(TextDelta(choice.index, text))
        if choice.assembler.stopped:
            self._end_choice(job, choice, "stop")
        elif choice.generated >= job.request.sampling.max_tokens or choice.pos >= self.context_length:
            self._end_choice(job, choice, "length")
        else:
            choice.next_token = token  # decoded next step at `choice.pos`
        return 1

    def _end_choice(self, job: _Job, choice: _Choice, reason: str) -> None:
        tail = choice.assembler.flush()
        if tail:
            job.emit(TextDelta(choice.index, tail))
        choice.done = True
        job.emit(ChoiceFinished(choice.index, reason, choice.generated))

    def _finish(self, ctx: LlamaContext, job: _Job, error: Exception | None) -> None:
        """Release the job's slots and close its event stream (with `error` if given)."""
        if job.finished:
            return
        job.finished = True
        if job in self._active:
            self._active.remove(job)
        if job.admitted:
            for choice in job.choices:
                if choice.slot >= 0:
                    ctx.forget(choice.slot)
                    self._free_slots.append(choice.slot)
                    choice.slot = -1
        else:
            with self._lock:
                self._queued -= 1
        if error is not None:
            job.emit(error)
        job.emit(_END)
