"""`POST /v1/responses/compact` through the official Python SDK on the real bundled model: older turns
summarised into a compaction item, the newest turn kept verbatim, the result usable as the next
`input`, one ledger row; every object validated against the spec. Generations are tiny (2 cores)."""

from __future__ import annotations

import openai
import pytest

from serverproc import ServerProcess, wait_for_entry
from support.openapi_spec import validate

EARLIER_TURNS = [
    {"role": "user", "content": "My name is Ada and I like green tea."},
    {
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Nice to meet you, Ada. Green tea is lovely.", "annotations": []}],
    },
]


def test_compact_summarises_older_turns_and_keeps_the_newest_verbatim(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    newest = {"role": "user", "content": "What do I like to drink?"}
    raw = client.responses.with_raw_response.compact(model=model, input=[*EARLIER_TURNS, newest])  # type: ignore[list-item]
    body = raw.http_response.json()
    validate("CompactResource", body)
    compacted = raw.parse()
    assert compacted.object == "response.compaction" and compacted.id.startswith("resp_")
    summary, *kept = compacted.output
    assert summary.type == "compaction" and summary.id.startswith("cmp_") and summary.encrypted_content
    assert [(i.type, i.role, i.content[0].text) for i in kept] == [("message", "user", "What do I like to drink?")]  # type: ignore[union-attr]
    usage = compacted.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 16 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    entry = wait_for_entry(server, compacted.id)
    assert (entry.operation, entry.prompt_tokens, entry.completion_tokens) == ("responses", usage.input_tokens, usage.output_tokens)

    # The compacted items are the next request's input, as OpenAI documents.
    follow_up = client.responses.create(
        model=model, input=[*body["output"], {"role": "user", "content": "Answer in one word."}], max_output_tokens=4, store=False
    )
    assert follow_up.status in ("completed", "incomplete")


def test_compact_reads_the_previous_response_chain(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(model=model, input=EARLIER_TURNS, max_output_tokens=4)  # type: ignore[arg-type]
    raw = client.responses.with_raw_response.compact(model=model, previous_response_id=first.id, input="And my name?")
    body = raw.http_response.json()
    validate("CompactResource", body)
    assert [item["type"] for item in body["output"]] == ["compaction", "message"]
    assert body["output"][1]["content"] == [{"type": "input_text", "text": "And my name?"}]


def test_compact_with_nothing_older_than_the_newest_turn_returns_it_and_runs_nothing(client: openai.OpenAI, model: str) -> None:
    raw = client.responses.with_raw_response.compact(model=model, input="Hello there")
    body = raw.http_response.json()
    validate("CompactResource", body)
    assert [(i["type"], i["role"], i["content"]) for i in body["output"]] == [("message", "user", [{"type": "input_text", "text": "Hello there"}])]
    assert body["usage"]["total_tokens"] == 0


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}, "input[0]"),
        ({"previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"input": [{"type": "compaction", "encrypted_content": "x" * ((1 << 20) + 1)}]}, "input"),
    ],
)
def test_what_cannot_be_compacted_is_an_error_naming_the_field(client: openai.OpenAI, model: str, fields: dict[str, object], param: str) -> None:
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as caught:
        client.responses.compact(model=model, **fields)  # type: ignore[arg-type]
    assert caught.value.body["param"] == param  # type: ignore[index]
