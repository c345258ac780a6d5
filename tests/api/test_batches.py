"""The Batch API through the official Python SDK and the real Files API: `files.create` → `batches.create`
→ poll → `files.content`, for each endpoint a batch runs, over scripted models (the runner's own logic,
cancel, expiry and resumes are in tests/batches/). Every object is checked against the spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from batches.harness import CHAT_MODEL, EMBEDDING_MODEL, Served, jsonl, served
from support.openapi_spec import validate

LINES = {
    "/v1/chat/completions": ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}, "chat.completion", CHAT_MODEL),
    "/v1/completions": ({"prompt": "Once", "max_tokens": 4}, "text_completion", CHAT_MODEL),
    "/v1/embeddings": ({"input": "a"}, "list", EMBEDDING_MODEL),
    "/v1/responses": ({"input": "Hi", "max_output_tokens": 16}, "response", CHAT_MODEL),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with served(tmp_path_factory.mktemp("batches-api")) as world:
        yield world


def _upload(client: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    return client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch").id


@pytest.mark.parametrize("endpoint", list(LINES))
def test_the_sdk_flow_runs_each_endpoint(world: Served, endpoint: str) -> None:
    body, kind, model = LINES[endpoint]
    client = world.client()
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": endpoint, "body": {"model": model, **body}} for i in range(3)]
    created = client.batches.with_raw_response.create(
        input_file_id=_upload(client, lines), endpoint=endpoint, completion_window="24h", metadata={"run": "sdk"}  # type: ignore[arg-type]
    )
    validate("Batch", created.http_response.json())
    batch = world.finished(client, created.parse().id)

    assert batch.status == "completed" and batch.request_counts.completed == 3 and batch.request_counts.failed == 0, batch
    validate("Batch", client.batches.with_raw_response.retrieve(batch.id).http_response.json())
    assert batch.output_file_id and batch.error_file_id is None
    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output"
    output = [json.loads(line) for line in client.files.content(batch.output_file_id).content.splitlines()]
    assert [line["custom_id"] for line in output] == ["c0", "c1", "c2"]
    assert all(line["response"]["status_code"] == 200 and line["response"]["body"]["object"] == kind for line in output)
    assert batch.usage is not None and batch.usage.input_tokens == sum(
        line["response"]["body"]["usage"].get("prompt_tokens", line["response"]["body"]["usage"].get("input_tokens", 0)) for line in output
    )


def test_a_file_for_another_endpoint_fails_validation_naming_its_lines(world: Served) -> None:
    client = world.client()
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions", "body": {"model": CHAT_MODEL, "prompt": "x"}} for i in range(2)]
    batch = client.batches.create(input_file_id=_upload(client, lines), endpoint="/v1/chat/completions", completion_window="24h")
    batch = world.finished(client, batch.id)
    assert batch.status == "failed" and batch.errors is not None
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [(1, "mismatched_endpoint", "url"), (2, "mismatched_endpoint", "url")]
    validate("Batch", client.batches.with_raw_response.retrieve(batch.id).http_response.json())


def test_another_projects_file_and_batch_are_not_found(world: Served) -> None:
    client, theirs = world.client(), world.client(world.b)
    file_id = _upload(client, [{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": EMBEDDING_MODEL, "input": "a"}}])
    with pytest.raises(openai.BadRequestError) as refused:
        theirs.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    assert refused.value.body["param"] == "input_file_id"  # type: ignore[index]
    batch = world.finished(client, client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h").id)
    for call in (theirs.batches.retrieve, theirs.batches.cancel):
        with pytest.raises(openai.NotFoundError):
            call(batch.id)
    assert batch.output_file_id
    with pytest.raises(openai.NotFoundError):
        theirs.files.content(batch.output_file_id)
    validate("ListBatchesResponse", client.batches.with_raw_response.list(limit=2).http_response.json())


def test_output_files_expire_as_asked(world: Served) -> None:
    client = world.client()
    lines = [{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": EMBEDDING_MODEL, "input": "a"}}]
    batch = client.batches.create(
        input_file_id=_upload(client, lines), endpoint="/v1/embeddings", completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 3600},
    )
    batch = world.finished(client, batch.id)
    assert batch.output_file_id
    output = client.files.retrieve(batch.output_file_id)
    assert output.expires_at is not None and abs(output.expires_at - (output.created_at + 3600)) <= 2
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=_upload(client, lines), endpoint="/v1/embeddings", completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 60},  # under the spec's hour
        )


def test_a_line_that_asks_to_stream_gets_a_400_in_the_error_file(world: Served, tmp_path: Path) -> None:
    client = world.client()
    lines = [
        {"custom_id": "s", "method": "POST", "url": "/v1/responses", "body": {"model": CHAT_MODEL, "input": "Hi", "stream": True}},
        {"custom_id": "b", "method": "POST", "url": "/v1/responses", "body": {"model": CHAT_MODEL, "input": "Hi", "background": True}},
    ]
    batch = world.finished(client, client.batches.create(input_file_id=_upload(client, lines), endpoint="/v1/responses", completion_window="24h").id)
    assert batch.status == "completed" and batch.output_file_id is None and batch.error_file_id
    errors = {line["custom_id"]: line["response"] for line in map(json.loads, client.files.content(batch.error_file_id).content.splitlines())}
    assert {k: (v["status_code"], v["body"]["error"]["param"]) for k, v in errors.items()} == {"s": (400, "stream"), "b": (400, "background")}


def test_a_batch_whose_output_would_pass_the_storage_limit_fails_naming_it(tmp_path: Path) -> None:
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": CHAT_MODEL, **LINES["/v1/chat/completions"][0]}} for i in range(6)]
    # The input fits, with room for its upload's multipart overhead; six chat completions (about 3.4 KB) do not.
    limit = len(jsonl(lines)) + 1024
    with served(tmp_path, project_storage_limit_bytes=limit) as world:
        client = world.client()
        input_file = _upload(client, lines)
        raw = client.batches.with_raw_response.retrieve(
            world.finished(client, client.batches.create(input_file_id=input_file, endpoint="/v1/chat/completions", completion_window="24h").id).id
        )
        validate("Batch", raw.http_response.json())
        batch = raw.parse()

        assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None and batch.errors is not None
        [error] = batch.errors.data
        assert error.code == "storage_limit_exceeded" and f"storage limit of {limit} bytes" in (error.message or "")
        assert "output file" in (error.message or "")
        assert batch.request_counts.completed == 6 and batch.usage is not None and batch.usage.output_tokens > 0  # they ran
        assert [f.id for f in client.files.list()] == [input_file]  # nothing half-kept
