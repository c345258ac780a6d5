"""Per-sequence sampling: each request's settings act on its own tokens only."""

from __future__ import annotations

import numpy as np

from modelhost.engine.base import SamplingParams
from modelhost.engine.sampling import TokenSampler, draw_index

V = 1000


def logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=V).astype(np.float32)


def test_temperature_zero_is_greedy() -> None:
    row = logits()
    assert TokenSampler(SamplingParams(max_tokens=1, temperature=0), V, 0).sample(row) == int(np.argmax(row))


def test_logit_bias_can_force_and_forbid_tokens() -> None:
    row = logits()
    forced = TokenSampler(SamplingParams(max_tokens=1, logit_bias={7: 100}), V, 0)
    assert all(forced.sample(row) == 7 for _ in range(20))
    best = int(np.argmax(row))
    banned = TokenSampler(SamplingParams(max_tokens=1, temperature=0, logit_bias={best: -100}), V, 0)
    assert banned.sample(row) != best


def test_the_logits_row_is_not_modified() -> None:
    row = logits()
    copy = row.copy()
    TokenSampler(SamplingParams(max_tokens=1, logit_bias={1: 50}, temperature=0.5), V, 0).sample(row)
    assert np.array_equal(row, copy)


def test_same_seed_same_tokens_different_choice_index_differs() -> None:
    row = logits()
    params = SamplingParams(max_tokens=1, seed=42, temperature=1.5)
    a = [TokenSampler(params, V, 0).sample(row) for _ in range(3)]
    first = TokenSampler(params, V, 0)
    second = TokenSampler(params, V, 1)
    seq_a = [first.sample(row) for _ in range(30)]
    seq_b = [second.sample(row) for _ in range(30)]
    assert len(set(a)) == 1
    assert seq_a != seq_b


def test_top_p_keeps_only_the_nucleus() -> None:
    row = np.full(V, -10.0, dtype=np.float32)
    row[[3, 4]] = 5.0  # two tokens hold nearly all the mass
    sampler = TokenSampler(SamplingParams(max_tokens=1, top_p=0.5, seed=1), V, 0)
    assert {sampler.sample(row) for _ in range(50)} <= {3, 4}


def test_frequency_penalty_discourages_repeats() -> None:
    row = np.zeros(V, dtype=np.float32)
    row[9] = 1.0
    sampler = TokenSampler(SamplingParams(max_tokens=1, temperature=0, frequency_penalty=2.0), V, 0)
    assert sampler.sample(row) == 9
    sampler.accept(9)
    assert sampler.sample(row) != 9


def test_draws_follow_the_weights_and_never_pick_a_zero_weight() -> None:
    rng = np.random.default_rng(3)
    weights = rng.random(49_152).astype(np.float32) ** 8  # spread over many blocks
    weights[rng.choice(weights.size, 20_000, replace=False)] = 0.0
    weights[[0, 1, weights.size - 1]] = 0.0  # the edges too
    picks = np.array([draw_index(weights, u) for u in rng.random(20_000)])
    assert np.all(weights[picks] > 0)
    # Which half of the vocabulary a draw lands in, against that half's share of the weight.
    share = float(weights[: weights.size // 2].sum() / weights.sum())
    assert abs(float(np.mean(picks < weights.size // 2)) - share) < 0.02
    # The extremes of u land on the first and the last token that can be drawn.
    nonzero = np.flatnonzero(weights)
    assert draw_index(weights, 0.0) == nonzero[0]
    assert draw_index(weights, np.nextafter(1.0, 0.0)) == nonzero[-1]


def test_a_draw_matches_a_plain_search_of_the_running_sum() -> None:
    rng = np.random.default_rng(4)
    weights = np.exp(rng.normal(size=5_000) * 3).astype(np.float32)
    cumulative = np.cumsum(weights, dtype=np.float64)
    for u in rng.random(500):
        expected = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
        assert abs(draw_index(weights, float(u)) - expected) <= 1  # equal but for rounding at a boundary
