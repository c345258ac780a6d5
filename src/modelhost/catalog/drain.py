"""Engines and embedders that count their running work, so a reload can stop one once it is idle.

``DrainableEngine(engine)`` behaves exactly like `engine` (every attribute is the inner one's) but
counts the generations it handed out until each ends or is cancelled (`open`). After ``close()``
it refuses new work with `EngineOverloaded` — a 503 with Retry-After that the SDKs retry, by then
against the new registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import numpy as np

from modelhost.engine.base import Engine, EngineEvent, EngineOverloaded, Generation, GenerationRequest
from modelhost.engine.embedding.base import Embedder, EmbedderOverloaded
from modelhost.engine.wrapper import EngineWrapper


class _CountedGeneration:
    def __init__(self, inner: Generation, owner: DrainableEngine) -> None:
        self._inner = inner
        self._owner = owner
        self._open = True

    @property
    def completion_tokens(self) -> int:
        return self._inner.completion_tokens

    @property
    def cached_tokens(self) -> int:
        return self._inner.cached_tokens

    def _release(self) -> None:
        if self._open:
            self._open = False
            self._owner.open -= 1

    def cancel(self) -> None:
        self._inner.cancel()
        self._release()

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        try:
            async for event in self._inner:
                yield event
        finally:
            self._release()


class DrainableEngine(EngineWrapper):
    """`Engine` wrapper; see the module docstring."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.open = 0
        self.closed = False

    def submit(self, request: GenerationRequest) -> _CountedGeneration:
        if self.closed:
            raise EngineOverloaded("this model was reconfigured; its old engine takes no more requests")
        generation = self.inner.submit(request)
        self.open += 1
        return _CountedGeneration(generation, self)


class DrainableEmbedder:
    """`Embedder` wrapper with the same counting and closing as `DrainableEngine`."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.open = 0
        self.closed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        if self.closed:
            raise EmbedderOverloaded("this model was reconfigured; its old embedder takes no more requests")
        self.open += 1
        try:
            return await self.inner.embed(sequences)
        finally:
            self.open -= 1
