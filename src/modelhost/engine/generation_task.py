"""The generation every engine hands out: an event queue that one reader iterates, `cancel()`,
and the request's token counts.

An engine puts a request's events on `events` and ends them with `END`; an `EngineFailed` put
there is raised to the reader instead of an event. Iterating the task reads them; a reader that
leaves early (a client gone, an error) cancels the work, so nothing runs for nobody::

    task = engine.submit(request)        # a GenerationTask
    async for event in task: ...         # TextDelta, ChoiceFinished, ... ; EngineFailed is raised
    task.completion_tokens               # exact once the stream has ended

`GenerationTask` is the queue and the counts; the engine says how to stop (`cancel`). The
llama.cpp engine's decode thread fills the queue through ``loop.call_soon_threadsafe``.
`CoroutineGenerationTask` adds what vLLM and an upstream share: the work is one coroutine on the
event loop (`run`), cancelling is cancelling it, and whatever it raises still ends the stream
cleanly (`unexpected` says what the reader is told).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator

from modelhost.engine.base import EngineEvent, EngineFailed

END = object()  # put on the queue last: no more events


class GenerationTask(abc.ABC):
    """One submitted request of `n` choices (the `Generation` protocol); see the module docstring."""

    def __init__(self, n: int) -> None:
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.generated = [0] * n  # completion tokens of each choice so far
        self.cached = 0  # prompt tokens served from a cache instead of being computed

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far over all choices (exact once the stream has ended)."""
        return sum(self.generated)

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens served from a cache (the caller's own prefixes only)."""
        return self.cached

    def emit(self, item: object) -> None:
        """Put an event (or `END`, or an `EngineFailed` for the reader) on the queue; event loop only."""
        self.events.put_nowait(item)

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the work and free what it holds; harmless once it has ended."""

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        try:
            while True:
                item = await self.events.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self.cancel()


class CoroutineGenerationTask(GenerationTask):
    """A generation whose work is one coroutine on the event loop, started at construction."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        # The task first runs at the loop's next turn: a subclass may set its fields after this call.
        self._task = asyncio.get_running_loop().create_task(self._drive())

    @abc.abstractmethod
    async def run(self) -> None:
        """Produce the request's events with `emit`; raise `EngineFailed` when it cannot finish."""

    @abc.abstractmethod
    def unexpected(self, error: Exception) -> EngineFailed:
        """Log `error` (called inside its `except`) and say what the reader is told instead."""

    def cancel(self) -> None:
        if not self._task.done():
            self._task.cancel()

    async def _drive(self) -> None:
        try:
            await self.run()
        except EngineFailed as exc:
            self.emit(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, or the library failing: the stream still ends cleanly
            self.emit(self.unexpected(exc))
        finally:
            self.emit(END)
