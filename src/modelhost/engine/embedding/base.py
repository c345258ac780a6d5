"""The embedding interface: token sequences in, unit vectors out.

Two implementations: `SentenceEmbedder` (a BERT sentence-transformers model, NumPy forward pass)
and `LlamaEmbedder` (a GGUF model's mean-pooled hidden states through its own llama.cpp context).
The API and the pipeline cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from modelhost.engine.base import EngineFailed, EngineOverloaded


class EmbedderOverloaded(EngineOverloaded):
    """Too many embedding jobs are waiting (`pipeline.engine_errors`: a 503 with Retry-After)."""


class EmbedderFailed(EngineFailed):
    """The model could not compute the embeddings; its message is for the logs only."""


class Embedder(Protocol):
    """A loaded model that turns framed token sequences into L2-normalised vectors.

    `tokenize` gives a text's own tokens and `frame` wraps them (or a caller's token array) in
    whatever the model reads around them ([CLS]/[SEP], BOS); `max_input_tokens` bounds a framed
    sequence. `embed` runs on the embedder's own worker thread, never on the event loop, and
    stops early when the awaiting task is cancelled.
    """

    model_id: str
    dimensions: int
    max_input_tokens: int
    vocab_size: int

    def tokenize(self, text: str) -> list[int]: ...

    def frame(self, tokens: Sequence[int]) -> list[int]: ...

    async def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """(len(sequences), dimensions) float32 unit vectors, in order; raises `EmbedderOverloaded`."""
        ...

    def state(self) -> dict[str, object]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def length_buckets(lengths: Sequence[int], max_padded_tokens: int, max_batch: int) -> list[list[int]]:
    """Group sequence indices into batches of similar length, each at most `max_padded_tokens` once padded.

    ``length_buckets([5, 300, 7, 6], 1024, 64) -> [[0, 3, 2], [1]]``: sorting by length keeps the
    padding small; a sequence longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # sorted: the newest member is the longest
        if current and (len(current) + 1 > max_batch or (len(current) + 1) * longest > max_padded_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
