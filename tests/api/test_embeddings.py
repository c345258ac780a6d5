"""`POST /v1/embeddings` through the official SDKs against the real bundled models."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from clients import runner
from serverproc import EMBEDDING_MODEL, ServerProcess, ledger_of
from support.openapi_spec import validate

REFERENCE = json.loads(
    (Path(__file__).parents[1] / "engine" / "fixtures" / "minilm_reference.json").read_text(encoding="utf-8")
)
FOOD, BREAD, DRUMS = "A man is eating food.", "A man is eating a piece of bread.", "A monkey is playing drums."


def vectors(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([d.embedding for d in response.data], dtype=np.float64)


def ledger_ids(server: ServerProcess) -> set[str]:
    return {e.request_id for e in ledger_of(server).entries()}


def new_ledger_entries(server: ServerProcess, seen: set[str], count: int = 1, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """The `count` ledger rows written since `seen` was taken (waits for them)."""
    ledger = ledger_of(server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [e for e in ledger.entries() if e.request_id not in seen]
        if len(fresh) >= count:
            assert len(fresh) == count, fresh
            return fresh
        time.sleep(0.1)
    raise AssertionError(f"expected {count} new ledger rows")


def bad_request(client: openai.OpenAI, **kwargs: object) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(**{"model": EMBEDDING_MODEL, **kwargs})  # type: ignore[arg-type]
    return caught.value


def test_response_matches_openai_schema_and_usage_is_recorded(client: openai.OpenAI, server: ServerProcess) -> None:
    seen = ledger_ids(server)
    raw = client.embeddings.with_raw_response.create(
        model=EMBEDDING_MODEL, input=[FOOD, BREAD], encoding_format="float"
    )
    body = raw.http_response.json()
    validate("CreateEmbeddingResponse", body)
    assert body["object"] == "list" and body["model"] == EMBEDDING_MODEL
    assert [(d["object"], d["index"], len(d["embedding"])) for d in body["data"]] == [
        ("embedding", 0, 384),
        ("embedding", 1, 384),
    ]
    # [CLS] + 6 + [SEP] and [CLS] + 9 + [SEP]: the tokens the model read
    assert body["usage"] == {"prompt_tokens": 19, "total_tokens": 19}
    (entry,) = new_ledger_entries(server, seen)
    assert (entry.operation, entry.model, entry.outcome) == ("embeddings", EMBEDDING_MODEL, "completed")
    assert (entry.prompt_tokens, entry.completion_tokens) == (19, 0)


def test_vectors_are_the_reference_model_s(client: openai.OpenAI) -> None:
    cases = REFERENCE["embeddings"][:4]
    response = client.embeddings.create(
        model=EMBEDDING_MODEL, input=[c["text"] for c in cases], encoding_format="float"
    )
    assert np.abs(vectors(response) - np.array([c["vector"] for c in cases])).max() <= 1e-5


def test_sdk_default_base64_decodes_to_the_float_response(client: openai.OpenAI, server: ServerProcess) -> None:
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=[FOOD, DRUMS], encoding_format="float")
    decoded = client.embeddings.create(model=EMBEDDING_MODEL, input=[FOOD, DRUMS])  # the SDK asks for base64
    assert [d.embedding for d in decoded.data] == [d.embedding for d in floats.data]
    raw = httpx.post(
        f"{server.base_url}/embeddings",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": EMBEDDING_MODEL, "input": FOOD, "encoding_format": "base64"},
        timeout=60,
    ).json()
    little_endian = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert little_endian.tolist() == floats.data[0].embedding


def test_a_list_gives_the_same_vectors_as_one_by_one(client: openai.OpenAI) -> None:
    texts = [FOOD, REFERENCE["embeddings"][-1]["text"], "x", BREAD]
    together = vectors(client.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float"))
    alone = np.vstack(
        [vectors(client.embeddings.create(model=EMBEDDING_MODEL, input=t, encoding_format="float")) for t in texts]
    )
    assert np.abs(together - alone).max() <= 1e-6


def test_token_arrays_embed_like_their_text(client: openai.OpenAI) -> None:
    cases = REFERENCE["tokenizer"][:3]  # reference ids of the model's own vocabulary, without [CLS]/[SEP]
    text = vectors(
        client.embeddings.create(model=EMBEDDING_MODEL, input=[c["text"] for c in cases], encoding_format="float")
    )
    arrays = client.embeddings.create(model=EMBEDDING_MODEL, input=[c["ids"] for c in cases], encoding_format="float")
    one = client.embeddings.create(model=EMBEDDING_MODEL, input=cases[0]["ids"], encoding_format="float")
    assert np.abs(vectors(arrays) - text).max() <= 1e-6
    assert np.abs(vectors(one)[0] - text[0]).max() <= 1e-6
    assert one.usage.prompt_tokens == len(cases[0]["ids"]) + 2


def test_related_sentences_score_a_higher_cosine_than_unrelated(client: openai.OpenAI) -> None:
    food, bread, drums = vectors(client.embeddings.create(model=EMBEDDING_MODEL, input=[FOOD, BREAD, DRUMS]))
    assert np.allclose(np.linalg.norm([food, bread, drums], axis=1), 1.0, atol=1e-5)
    assert food @ bread > 0.6 > 0.2 > food @ drums


def test_dimensions_other_than_the_model_s_own_are_refused(client: openai.OpenAI) -> None:
    same = client.embeddings.create(model=EMBEDDING_MODEL, input=FOOD, dimensions=384)
    assert len(same.data[0].embedding) == 384
    error = bad_request(client, input=FOOD, dimensions=128)
    assert error.status_code == 400 and error.body["param"] == "dimensions"  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"input": ""}, "invalid_value"),
        ({"input": []}, "invalid_value"),
        ({"input": [FOOD, ""]}, "invalid_value"),
        ({"input": [[]]}, "invalid_value"),
        ({"input": [101, 30522]}, "invalid_value"),
        ({"input": ["a"] * 2049}, "invalid_value"),
        ({"input": "word " * 300}, "context_length_exceeded"),
        ({"input": "x" * 20_000}, "context_length_exceeded"),
        ({"input": [[1037] * 300]}, "context_length_exceeded"),
        ({"input": [1, "a"]}, "invalid_type"),
        ({"input": [True]}, "invalid_type"),
    ],
    ids=[
        "empty",
        "empty-list",
        "empty-item",
        "empty-tokens",
        "unknown-token",
        "too-many",
        "too-long",
        "too-many-chars",
        "too-long-tokens",
        "mixed",
        "booleans",
    ],
)
def test_bad_input_is_a_400_naming_input(client: openai.OpenAI, kwargs: dict[str, object], code: str) -> None:
    error = bad_request(client, **kwargs)
    assert error.status_code == 400
    assert (error.body["type"], error.body["param"], error.body["code"]) == ("invalid_request_error", "input", code)  # type: ignore[index]


def test_too_many_tokens_in_one_request_are_refused(client: openai.OpenAI) -> None:
    error = bad_request(client, input=["word " * 250] * 300)  # 300 x 252 tokens > 65,536
    assert error.status_code == 400 and error.body["param"] == "input"  # type: ignore[index]
    assert "65536" in error.body["message"]  # type: ignore[index]


def test_unknown_and_non_embedding_models_are_refused(client: openai.OpenAI, model: str) -> None:
    unknown = bad_request(client, model="text-embedding-3-small", input=FOOD)
    assert unknown.status_code == 404 and unknown.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["param"] == "model" and "embedding model" in caught.value.body["message"]  # type: ignore[index]


def test_user_and_unknown_fields_are_accepted(client: openai.OpenAI) -> None:
    response = client.embeddings.create(
        model=EMBEDDING_MODEL, input=FOOD, user="user-1234", extra_body={"future_field": 1}
    )
    assert len(response.data) == 1


def test_embedding_model_is_listed_and_retrievable(client: openai.OpenAI) -> None:
    assert EMBEDDING_MODEL in [m.id for m in client.models.list()]
    assert client.models.retrieve(EMBEDDING_MODEL).id == EMBEDDING_MODEL


def test_the_chat_model_serves_embeddings_too(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    seen = ledger_ids(server)
    together = client.embeddings.create(model=model, input=[FOOD, DRUMS], encoding_format="float")
    alone = vectors(client.embeddings.create(model=model, input=FOOD, encoding_format="float"))
    assert together.model == model and len(together.data[0].embedding) == 576
    assert np.abs(vectors(together)[0] - alone[0]).max() <= 1e-5
    entries = new_ledger_entries(server, seen, count=2)
    assert {(e.model, e.operation) for e in entries} == {(model, "embeddings")}


def test_node_sdk_decodes_its_default_base64_to_the_float_vectors(
    server: ServerProcess,
    project_key,  # type: ignore[no-untyped-def]
) -> None:
    if not runner.node_available():
        pytest.skip("node/npm are not installed")
    env = {
        "MODELHOST_BASE_URL": server.base_url,
        "MODELHOST_API_KEY": project_key.secret,
        "MODELHOST_ORG": project_key.organization,
        "MODELHOST_MODEL": EMBEDDING_MODEL,
    }
    result = runner.run_node("node_embeddings.mjs", env)
    assert (result["object"], result["model"], result["indexes"]) == ("list", EMBEDDING_MODEL, [0, 1, 2])
    assert result["default_is_array"] and result["default_vectors"] == result["float_vectors"]
    food, bread, drums = np.array(result["float_vectors"])
    assert food @ bread > food @ drums
    assert result["usage"]["prompt_tokens"] == result["usage"]["total_tokens"] > 0


def test_a_client_that_leaves_stops_the_work_and_is_recorded_as_cancelled(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    seen = ledger_ids(server)
    big = {"model": EMBEDDING_MODEL, "input": ["word " * 250] * 200, "encoding_format": "float"}  # ~50k tokens
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{server.base_url}/embeddings",
            headers={"Authorization": f"Bearer {client.api_key}"},
            json=big,
            timeout=1.5,
        )
    (entry,) = new_ledger_entries(server, seen, timeout=20)
    assert (entry.operation, entry.outcome, entry.prompt_tokens) == ("embeddings", "cancelled", 200 * 252)
    started = time.monotonic()
    client.embeddings.create(model=EMBEDDING_MODEL, input=FOOD)  # the worker is free again
    assert time.monotonic() - started < 10
