"""The NumPy BERT forward pass reproduces sentence-transformers' all-MiniLM-L6-v2 vectors.

The reference numbers in fixtures/minilm_reference.json were computed with torch and
sentence-transformers outside the repository (see its "about" field); nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from modelhost.engine.embedding import SentenceEmbedder, bundled_embedding_model_dir

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "minilm_reference.json").read_text(encoding="utf-8"))
TEXTS = [case["text"] for case in REFERENCE["embeddings"]]
VECTORS = np.array([case["vector"] for case in REFERENCE["embeddings"]], dtype=np.float64)


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(bundled_embedding_model_dir(), model_id="all-minilm-l6-v2")


def embed(embedder: SentenceEmbedder, sequences: list[list[int]]) -> np.ndarray:
    async def run() -> np.ndarray:
        await embedder.start()
        try:
            return await embedder.embed(sequences)
        finally:
            await embedder.stop()

    return asyncio.run(run())


def framed(embedder: SentenceEmbedder, texts: list[str]) -> list[list[int]]:
    return [embedder.frame(embedder.tokenize(t)) for t in texts]


def test_model_shape_and_limits(embedder: SentenceEmbedder) -> None:
    assert embedder.dimensions == 384
    assert embedder.max_input_tokens == 256  # sentence_bert_config.json's max_seq_length
    assert embedder.vocab_size == 30522


def test_vectors_match_sentence_transformers(embedder: SentenceEmbedder) -> None:
    ours = embed(embedder, framed(embedder, TEXTS))
    assert ours.dtype == np.float32
    assert np.abs(ours - VECTORS).max() <= 1e-5  # the reference is rounded to 7 decimals


def test_each_input_alone_matches_the_padded_batch(embedder: SentenceEmbedder) -> None:
    sequences = framed(embedder, TEXTS)
    batch = embed(embedder, sequences)
    alone = np.array([embed(embedder, [s])[0] for s in sequences[:4]])
    assert np.abs(batch[:4] - alone).max() <= 1e-6


def test_vectors_are_unit_length(embedder: SentenceEmbedder) -> None:
    norms = np.linalg.norm(embed(embedder, framed(embedder, TEXTS)), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


def test_related_sentences_are_closer_than_unrelated(embedder: SentenceEmbedder) -> None:
    food, bread, drums = embed(embedder, framed(embedder, TEXTS[0:2] + [TEXTS[5]]))
    assert food @ bread > 0.6 > 0.2 > food @ drums


def test_a_sequence_at_the_length_limit_is_embedded(embedder: SentenceEmbedder) -> None:
    tokens = embedder.tokenize("word " * 300)[: embedder.max_input_tokens - 2]
    (vector,) = embed(embedder, [embedder.frame(tokens)])
    assert np.isfinite(vector).all() and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
