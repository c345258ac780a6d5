"""Per-sequence token sampling over the model's logits, exactly as one request asked.

Each choice owns a `TokenSampler` with its own random generator, so a seeded request produces the
same tokens whether it runs alone or beside others in the same batch.
"""

from __future__ import annotations

import numpy as np

from modelhost.engine.base import SamplingParams
from modelhost.engine.grammar import GrammarConstraint

# top_p first looks among this many best tokens; only if they hold less mass than top_p is the
# whole vocabulary sorted (rare), which keeps a sample well under a millisecond.
_TOP_P_CANDIDATES = 512
# A draw walks the weights in blocks of this many: block sums are vectorized, and only the one
# block the draw falls in is summed token by token (a running sum over the whole vocabulary is
# sequential in NumPy and was most of a sample's time).
_DRAW_BLOCK = 256


class TokenSampler:
    """Applies logit_bias, presence/frequency penalties, temperature and top_p, then draws."""

    def __init__(self, params: SamplingParams, n_vocab: int, choice_index: int) -> None:
        self._params = params
        self._n_vocab = n_vocab
        bias = {t: b for t, b in params.logit_bias.items() if 0 <= t < n_vocab}
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self._bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self._penalised = bool(params.presence_penalty or params.frequency_penalty)
        self._counts: dict[int, int] = {}
        if params.seed is None:
            self._rng = np.random.default_rng()
        else:
            # Seeds are int64 on the wire; numpy wants non-negative entropy.
            self._rng = np.random.default_rng([params.seed & 0xFFFFFFFFFFFFFFFF, choice_index])

    def sample(self, logits: np.ndarray, constraint: GrammarConstraint | None = None) -> int:
        """Pick the next token from one row of logits (`logits` is not modified).

        With a grammar, the token is first drawn freely and kept if the grammar allows it; only
        otherwise is the whole vocabulary masked (the expensive path) and the draw repeated.
        Returns -1 when the grammar allows nothing at all.
        """
        scores = logits.astype(np.float32, copy=True)
        if self._bias_ids.size:
            scores[self._bias_ids] += self._bias_values
        if self._penalised and self._counts:
            ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            scores[ids] -= counts * self._params.frequency_penalty + self._params.presence_penalty
        if constraint is None:
            return self._pick(scores)
        token = self._pick(scores.copy())
        if constraint.allows(token):
            return token
        constraint.mask(scores)
        if not np.isfinite(scores.max()):
            return -1
        return self._pick(scores)

    def _pick(self, scores: np.ndarray) -> int:
        if self._params.temperature <= 0.0:
            return int(np.argmax(scores))
        scores /= self._params.temperature
        if self._params.top_p < 1.0:
            return self._sample_top_p(scores)
        np.subtract(scores, scores.max(), out=scores)
        probs = np.exp(scores, out=scores)
        return draw_index(probs, self._rng.random())

    def accept(self, token: int) -> None:
        """Record a generated token (for the penalties)."""
        if self._penalised:
            self._counts[token] = self._counts.get(token, 0) + 1

    def _sample_top_p(self, scores: np.ndarray) -> int:
        probs = np.exp(scores - scores.max())
        total = float(probs.sum())
        k = min(_TOP_P_CANDIDATES, probs.size)
        candidates = np.argpartition(probs, -k)[-k:] if k < probs.size else np.arange(probs.size)
        order = candidates[np.argsort(-probs[candidates], kind="stable")]
        cumulative = np.cumsum(probs[order]) / total
        if cumulative[-1] < self._params.top_p and k < probs.size:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order]) / total
        keep = int(np.searchsorted(cumulative, self._params.top_p)) + 1
        kept = order[:keep]
        return int(kept[draw_index(probs[kept], self._rng.random())])


def draw_index(weights: np.ndarray, u: float) -> int:
    """The index `i` where `u` (in [0, 1)) falls when the non-negative `weights` are laid end to end.

    A search in the running sum, computed in two levels: the block that holds the point, then the
    token inside it. A token of weight zero is never returned (rounding can land on one).
    """
    size = weights.size
    if size <= _DRAW_BLOCK:
        return _search(weights, u * float(weights.sum(dtype=np.float64)))
    block_sums = np.add.reduceat(weights, np.arange(0, size, _DRAW_BLOCK), dtype=np.float64)
    point = u * float(block_sums.sum())
    block = _search(block_sums, point)
    before = float(block_sums[:block].sum())
    start = block * _DRAW_BLOCK
    return start + _search(weights[start : start + _DRAW_BLOCK], point - before)


def _search(weights: np.ndarray, point: float) -> int:
    """The first index whose running sum exceeds `point`; on a zero weight, the next non-zero one (or the last)."""
    cumulative = np.cumsum(weights, dtype=np.float64)
    index = min(int(np.searchsorted(cumulative, point, side="right")), weights.size - 1)
    if weights[index] == 0.0:
        nonzero = np.flatnonzero(weights)
        index = int(nonzero[min(int(np.searchsorted(nonzero, index)), nonzero.size - 1)])
    return index


def log_softmax_at(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The log probability of `token` under the model's distribution, and the `top` likeliest tokens.

    Computed from the raw logits (temperature 1, no bias), which is what OpenAI reports.
    """
    row = logits.astype(np.float64, copy=False)
    peak = float(row.max())
    normaliser = peak + float(np.log(np.exp(row - peak).sum()))
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.argpartition(row, -top)[-top:]
        ids = ids[np.argsort(-row[ids], kind="stable")]
        best = [(int(i), float(row[i]) - normaliser) for i in ids]
    return float(row[token]) - normaliser, best
