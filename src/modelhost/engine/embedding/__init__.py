"""Embedding models: the `Embedder` interface and its NumPy BERT implementation.

The llama.cpp implementation lives in `modelhost.engine.embedding.gguf` and is imported where a
GGUF model is configured.
"""

from modelhost.engine.embedding.base import Embedder, EmbedderFailed, EmbedderOverloaded
from modelhost.engine.embedding.sentence import SentenceEmbedder, bundled_embedding_model_dir

__all__ = ["Embedder", "EmbedderFailed", "EmbedderOverloaded", "SentenceEmbedder", "bundled_embedding_model_dir"]
