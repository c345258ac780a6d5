"""Models are asked only for what they can do: chat models generate, embedding models embed."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.engine.embedding import SentenceEmbedder, bundled_embedding_model_dir
from modelhost.engine.registry import EMBEDDINGS, TEXT, ModelRegistry, ServedModel
from modelhost.errors import InvalidRequest, ModelNotFound, NotFound


class NotAnEngine:
    """Stands in for a generation engine: the registry only checks that one is there."""


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    embedder = SentenceEmbedder(bundled_embedding_model_dir(), model_id="emb")
    return ModelRegistry(
        [
            ServedModel(id="chat", created=0, owned_by="t", engine=NotAnEngine(), fingerprint="fp_1"),  # type: ignore[arg-type]
            ServedModel(id="emb", created=0, owned_by="t", engine=None, fingerprint="fp_2", embedder=embedder),
        ]
    )


def test_capabilities_follow_the_backends(registry: ModelRegistry) -> None:
    assert EMBEDDINGS not in registry.get("chat", caller=None).capabilities
    assert TEXT in registry.get("chat", caller=None).capabilities
    assert registry.get("emb", EMBEDDINGS, caller=None).capabilities == {EMBEDDINGS}


def test_an_embedding_model_asked_to_generate_is_not_found_naming_the_model(registry: ModelRegistry) -> None:
    with pytest.raises(NotFound) as caught:
        registry.get("emb", caller=None)
    assert caught.value.param == "model" and "embedding model" in caught.value.message


def test_a_chat_model_without_embeddings_is_a_bad_embeddings_request(registry: ModelRegistry) -> None:
    with pytest.raises(InvalidRequest) as caught:
        registry.get("chat", EMBEDDINGS, caller=None)
    assert caught.value.status == 400 and caught.value.param == "model"


def test_any_model_is_listed_and_retrievable_without_a_capability(registry: ModelRegistry) -> None:
    assert [m.id for m in registry.all()] == ["chat", "emb"]
    assert registry.get("emb", capability=None, caller=None).id == "emb"
    with pytest.raises(ModelNotFound):
        registry.get("nope", capability=None, caller=None)


def test_a_directory_that_pools_otherwise_is_refused(tmp_path: Path) -> None:
    from modelhost.engine.embedding.bert import BertLoadError

    (tmp_path / "modules.json").write_text(
        '[{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]'
    )
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        '{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}'
    )
    with pytest.raises(BertLoadError, match="only mean pooling"):
        SentenceEmbedder(tmp_path, model_id="x")
