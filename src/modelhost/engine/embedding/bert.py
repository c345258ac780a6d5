"""A BERT encoder (MiniLM and friends) in NumPy: token ids in, mean-pooled unit vectors out.

The forward pass is the one `transformers.BertModel` computes in eval mode — embeddings (word +
position + token type, LayerNorm), then per layer: self-attention with a padding mask, residual +
LayerNorm, a GELU feed-forward, residual + LayerNorm — followed by sentence-transformers' mean
pooling over the real tokens and L2 normalisation. float32 throughout, as the weights are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelhost.engine.embedding.tensors import read_safetensors


class BertLoadError(Exception):
    """The model directory is missing a file or holds an architecture this encoder cannot run."""


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    max_positions: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("model_type") != "bert":
            raise BertLoadError(f"{path}: model_type is {raw.get('model_type')!r}, not 'bert'")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise BertLoadError(f"{path}: activation {raw.get('hidden_act')!r} is not supported (only 'gelu')")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise BertLoadError(f"{path}: only absolute position embeddings are supported")
        config = cls(
            hidden_size=int(raw["hidden_size"]),
            layers=int(raw["num_hidden_layers"]),
            heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            max_positions=int(raw["max_position_embeddings"]),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        )
        assert config.hidden_size % config.heads == 0, "hidden_size must divide into the attention heads"
        return config


@dataclass(frozen=True)
class _Layer:
    qkv_w: np.ndarray  # (hidden, 3 * hidden): query, key and value projections side by side
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    return centered / np.sqrt(var + eps) * weight + bias


_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(c) for c in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26); NumPy has no erf and float32 needs no better."""
    a = np.abs(x)
    t = a * _ERF_P
    t += 1
    np.reciprocal(t, out=t)
    poly = np.full_like(t, _ERF_A[0])
    for coefficient in _ERF_A[1:]:
        poly *= t
        poly += coefficient
    poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # poly * exp(-x^2)
    np.subtract(1, poly, out=poly)
    return np.copysign(poly, x, out=poly)


def _gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU that BERT's ``hidden_act: gelu`` means, not the tanh approximation."""
    out = _erf(x * np.float32(0.7071067811865476))
    out += 1
    out *= x
    out *= np.float32(0.5)
    return out


class BertEncoder:
    """``BertEncoder.load(model_dir).embed(ids, mask) -> (batch, hidden)`` unit vectors.

    Not thread-safe in the sense that matters here: callers run it from one worker thread.
    """

    def __init__(self, config: BertConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config = config

        def get(name: str) -> np.ndarray:
            for key in (name, f"bert.{name}"):
                if key in tensors:
                    return np.asarray(tensors[key], dtype=np.float32)
            raise BertLoadError(f"the weights have no tensor {name}")

        self._word = get("embeddings.word_embeddings.weight")
        self._position = get("embeddings.position_embeddings.weight")
        self._token_type = get("embeddings.token_type_embeddings.weight")[0]
        self._emb_ln = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self._layers = []
        for i in range(config.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (get(p + f"attention.self.{n}.weight") for n in ("query", "key", "value"))
            qb, kb, vb = (get(p + f"attention.self.{n}.bias") for n in ("query", "key", "value"))
            self._layers.append(
                _Layer(
                    # Stored transposed and contiguous so each projection is one x @ W matmul.
                    qkv_w=np.ascontiguousarray(np.concatenate([q, k, v], axis=0).T),
                    qkv_b=np.concatenate([qb, kb, vb]),
                    out_w=np.ascontiguousarray(get(p + "attention.output.dense.weight").T),
                    out_b=get(p + "attention.output.dense.bias"),
                    ln1_w=get(p + "attention.output.LayerNorm.weight"),
                    ln1_b=get(p + "attention.output.LayerNorm.bias"),
                    up_w=np.ascontiguousarray(get(p + "intermediate.dense.weight").T),
                    up_b=get(p + "intermediate.dense.bias"),
                    down_w=np.ascontiguousarray(get(p + "output.dense.weight").T),
                    down_b=get(p + "output.dense.bias"),
                    ln2_w=get(p + "output.LayerNorm.weight"),
                    ln2_b=get(p + "output.LayerNorm.bias"),
                )
            )

    @classmethod
    def load(cls, model_dir: Path) -> BertEncoder:
        """Read ``config.json`` and ``model.safetensors`` from `model_dir`."""
        config_path, weights_path = model_dir / "config.json", model_dir / "model.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise BertLoadError(f"{path} is missing")
        return cls(BertConfig.from_file(config_path), read_safetensors(weights_path))

    @property
    def vocab_size(self) -> int:
        return int(self._word.shape[0])

    @property
    def dimensions(self) -> int:
        return self.config.hidden_size

    def embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings of a padded batch.

        `ids` is (batch, length) int token ids (framed with [CLS]/[SEP]); `mask` is (batch, length)
        with 1 for real tokens and 0 for padding. Returns (batch, hidden) float32.
        """
        hidden = self.hidden_states(ids, mask)
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The last layer's (batch, length, hidden) states."""
        cfg = self.config
        batch, length = ids.shape
        assert length <= cfg.max_positions, f"sequences are limited to {cfg.max_positions} tokens"
        eps, hidden = cfg.layer_norm_eps, cfg.hidden_size
        heads, head_dim = cfg.heads, hidden // cfg.heads
        x = self._word[ids] + self._position[:length] + self._token_type
        # Rows are tokens from here on: 2-D matmuls are several times faster than stacked 3-D ones.
        x = _layer_norm(x.reshape(batch * length, hidden), *self._emb_ln, eps)
        scale = np.float32(1.0 / np.sqrt(head_dim))
        # Padding gets the most negative float as its attention score, as transformers does.
        bias = np.where(mask[:, None, None, :] > 0, np.float32(0), np.finfo(np.float32).min).astype(np.float32)
        for layer in self._layers:
            qkv = (x @ layer.qkv_w + layer.qkv_b).reshape(batch, length, 3, heads, head_dim)
            q = np.ascontiguousarray(qkv[:, :, 0].transpose(0, 2, 1, 3))  # (batch, heads, length, head_dim)
            k_t = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 3, 1))  # (batch, heads, head_dim, length)
            v = np.ascontiguousarray(qkv[:, :, 2].transpose(0, 2, 1, 3))
            scores = q @ k_t
            scores *= scale
            scores += bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, hidden)
            x = _layer_norm(x + (context @ layer.out_w + layer.out_b), layer.ln1_w, layer.ln1_b, eps)
            up = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(x + (up @ layer.down_w + layer.down_b), layer.ln2_w, layer.ln2_b, eps)
        return x.reshape(batch, length, hidden)
