"""Embeddings from a GGUF chat model: mean-pooled last hidden states, through a llama.cpp context
of their own.

The context is created, used and freed only on this embedder's worker thread; the chat engine's
decode thread and its context are never touched (the two share only the read-only weights).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
from collections.abc import Sequence

import llama_cpp
import numpy as np

from modelhost.engine.embedding.base import EmbedderFailed
from modelhost.engine.embedding.worker import EmbeddingWorker
from modelhost.engine.llama_model import LlamaModel, ModelLoadError

logger = logging.getLogger(__name__)

MAX_SEQUENCES = 16  # sequences pooled in one decode


class LlamaEmbedder:
    """``await LlamaEmbedder(model, model_id="smollm2-135m-instruct", max_input_tokens=2048).embed([[1, 9906]])``.

    Sequences are packed into one batch while their tokens fit in `max_input_tokens` (the
    context's size), so a long input is decoded alone and short ones many at a time.
    """

    def __init__(
        self,
        model: LlamaModel,
        *,
        model_id: str,
        max_input_tokens: int,
        threads: int = 0,
        max_queued: int = 64,
    ) -> None:
        assert max_input_tokens >= 8, "an embedding context needs room for a few tokens"
        self.model_id = model_id
        self._model = model
        self.max_input_tokens = min(max_input_tokens, model.train_context)
        self.dimensions = int(llama_cpp.llama_model_n_embd(model.handle))
        self.vocab_size = model.n_vocab
        self._threads = threads or os.cpu_count() or 1
        self._worker = EmbeddingWorker(f"embed-{model_id}", max_queued=max_queued)
        self._ctx: llama_cpp.llama_context_p | None = None
        self._batch: llama_cpp.llama_batch | None = None

    def tokenize(self, text: str) -> list[int]:
        # Special-token text in an input is read as text: callers cannot inject control tokens.
        return self._model.tokenize(text, add_special=False, parse_special=False)

    def frame(self, tokens: Sequence[int]) -> list[int]:
        return [self._model.bos_id, *tokens] if self._model.add_bos else list(tokens)

    async def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        return await self._worker.run(lambda cancelled: self._forward(sequences, cancelled))

    # -- on the worker thread ---------------------------------------------------------------
    def _open(self) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.max_input_tokens
        params.n_batch = self.max_input_tokens
        params.n_ubatch = self.max_input_tokens  # pooling needs each sequence whole in one micro-batch
        params.n_seq_max = MAX_SEQUENCES
        params.kv_unified = True  # the packed sequences share the context's cells
        params.n_threads = self._threads
        params.n_threads_batch = self._threads
        params.embeddings = True
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._model.handle, params)
        if not ctx:
            raise ModelLoadError(f"llama.cpp could not create an embedding context for {self._model.path}")
        self._ctx = ctx
        self._batch = llama_cpp.llama_batch_init(self.max_input_tokens, 0, MAX_SEQUENCES)

    def _close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
            self._batch = None

    def _packs(self, lengths: list[int]) -> list[list[int]]:
        packs: list[list[int]] = []
        current: list[int] = []
        used = 0
        for i, n in enumerate(lengths):
            if current and (used + n > self.max_input_tokens or len(current) == MAX_SEQUENCES):
                packs.append(current)
                current, used = [], 0
            current.append(i)
            used += n
        if current:
            packs.append(current)
        return packs

    def _forward(self, sequences: Sequence[Sequence[int]], cancelled: threading.Event) -> np.ndarray:
        assert self._ctx is not None and self._batch is not None, "embedder not started"
        lengths = [len(s) for s in sequences]
        assert all(0 < n <= self.max_input_tokens for n in lengths), "sequences must be framed and within the limit"
        out = np.empty((len(sequences), self.dimensions), dtype=np.float32)
        memory = llama_cpp.llama_get_memory(self._ctx)
        batch = self._batch
        for pack in self._packs(lengths):
            if cancelled.is_set():
                return out
            n = 0
            for seq, i in enumerate(pack):
                for pos, token in enumerate(sequences[i]):
                    batch.token[n] = token
                    # llama_cpp annotates `pos` as an array of arrays; in C it is llama_pos*, one per token.
                    batch.pos[n] = pos  # type: ignore[call-overload]
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = seq
                    batch.logits[n] = 1
                    n += 1
            batch.n_tokens = n
            llama_cpp.llama_memory_clear(memory, True)
            code = int(llama_cpp.llama_decode(self._ctx, batch))
            if code != 0:
                raise EmbedderFailed(f"llama_decode returned {code}")
            for seq, i in enumerate(pack):
                ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
                if not ptr:
                    raise EmbedderFailed("llama.cpp returned no pooled embedding")
                vector = np.ctypeslib.as_array(
                    ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.dimensions,)
                )
                norm = float(np.linalg.norm(vector))
                out[i] = vector / norm if norm > 0 else vector
        return out

    # -- lifecycle --------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        return {
            "model": self.model_id,
            "kind": "embeddings",
            "backend": "llama.cpp",
            "dimensions": self.dimensions,
            "max_input_tokens": self.max_input_tokens,
            "pending": self._worker.pending,
        }

    async def start(self) -> None:
        await asyncio.to_thread(self._worker.start, self._open)

    async def stop(self) -> None:
        def stop_and_free() -> None:
            self._worker.stop()
            self._close()  # the worker thread has ended: nothing else can be using the context

        await asyncio.to_thread(stop_and_free)
