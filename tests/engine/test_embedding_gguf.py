"""A GGUF chat model serves embeddings through a llama.cpp context of its own."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from modelhost.engine.embedding.gguf import LlamaEmbedder
from modelhost.engine.llama_model import LlamaModel, bundled_model_path

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.", "Drums."]


@pytest.fixture(scope="module")
def embedder() -> LlamaEmbedder:
    return LlamaEmbedder(LlamaModel(bundled_model_path()), model_id="smollm2", max_input_tokens=256, threads=2)


def embed_all(embedder: LlamaEmbedder, batches: list[list[list[int]]]) -> list[np.ndarray]:
    async def run() -> list[np.ndarray]:
        await embedder.start()
        try:
            return [await embedder.embed(b) for b in batches]
        finally:
            await embedder.stop()

    return asyncio.run(run())


def test_packed_batch_matches_each_input_alone(embedder: LlamaEmbedder) -> None:
    sequences = [embedder.frame(embedder.tokenize(t)) for t in TEXTS]
    batch, *alone = embed_all(embedder, [sequences] + [[s] for s in sequences])
    assert batch.shape == (4, embedder.dimensions) == (4, 576)
    assert np.abs(batch - np.vstack(alone)).max() <= 1e-5
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_inputs_that_fill_the_context_are_decoded_in_several_packs(embedder: LlamaEmbedder) -> None:
    long = embedder.frame(embedder.tokenize("word " * 400))[: embedder.max_input_tokens]
    short = embedder.frame(embedder.tokenize(TEXTS[0]))
    assert embedder._packs([len(long), len(short), len(long)]) == [[0], [1], [2]]
    together, alone = embed_all(embedder, [[long, short, long], [short]])
    assert np.abs(together[1] - alone[0]).max() <= 1e-5
    assert np.abs(together[0] - together[2]).max() <= 1e-5


def test_special_token_text_is_not_parsed_as_a_control_token(embedder: LlamaEmbedder) -> None:
    assert len(embedder.tokenize("<|im_start|>")) > 1
