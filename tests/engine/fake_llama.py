"""A stand-in for a llama.cpp model and context, for testing the scheduler where the model is not the point.

Tokens are small integers; token t's text is ``chr(ord('a') + t % 26)``; the model always "predicts"
(last token + 1) mod VOCAB, or end-of-generation when `eog_after` tokens follow the prompt. Every
call is recorded so tests can see batches, KV copies and trims.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

VOCAB = 64
EOG = 63


@dataclass
class FakeContext:
    capacity: int
    step_seconds: float
    eog_after: int | None
    batches: list[list[tuple[int, int, int, bool]]] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    trims: list[tuple[int, int]] = field(default_factory=list)
    gate: threading.Event | None = None
    _batch: list[tuple[int, int, int, bool]] = field(default_factory=list)
    _logits: dict[int, np.ndarray] = field(default_factory=dict)
    prompt_len: dict[int, int] = field(default_factory=dict)

    def clear_batch(self) -> None:
        self._batch = []

    @property
    def batch_size(self) -> int:
        return len(self._batch)

    def add(self, token: int, pos: int, seq: int, want_logits: bool) -> int:
        assert len(self._batch) < self.capacity
        self._batch.append((token, pos, seq, want_logits))
        return len(self._batch) - 1

    def decode(self) -> int:
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.step_seconds)
        self.batches.append(list(self._batch))
        self._logits = {}
        for row, (token, pos, _seq, want) in enumerate(self._batch):
            if want:
                logits = np.full(VOCAB, -10.0, dtype=np.float32)
                nxt = EOG if self.eog_after is not None and pos >= self.eog_after else (token + 1) % (VOCAB - 1)
                logits[nxt] = 10.0
                self._logits[row] = logits
        return 0

    def logits(self, row: int) -> np.ndarray:
        return self._logits[row]

    def trim(self, seq: int, keep: int) -> None:
        self.trims.append((seq, keep))

    def copy_sequence(self, src: int, dst: int) -> None:
        self.copies.append((src, dst))

    def close(self) -> None:
        pass


class FakeModel:
    n_vocab = VOCAB
    train_context = 4096
    bos_id = -1
    eos_id = EOG
    vocab = None
    path = "fake"

    def __init__(self, *, step_seconds: float = 0.002, eog_after: int | None = None) -> None:
        self.step_seconds = step_seconds
        self.eog_after = eog_after
        self.context: FakeContext | None = None
        self.gate: threading.Event | None = None

    def new_context(self, options) -> FakeContext:  # type: ignore[no-untyped-def]
        self.context = FakeContext(options.batch_tokens, self.step_seconds, self.eog_after, gate=self.gate)
        return self.context

    def chat_template(self) -> str | None:
        return None

    def token_text(self, token: int) -> str:
        return ""

    def tokenize(self, text: str) -> list[int]:
        return [(ord(ch) - ord("a")) % 26 for ch in text]

    def piece(self, token: int, *, special: bool = False) -> bytes:
        return b"" if token == EOG else chr(ord("a") + token % 26).encode()

    def is_end_of_generation(self, token: int) -> bool:
        return token == EOG
