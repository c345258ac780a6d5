"""The Responses API through the official Python SDK against the real bundled model: created, streamed,
parsed, stored, chained (with a function call round trip), retrieved, listed and deleted; every
object and event validated against the spec. Real generations are few and short (2 cores)."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel

from responses.spec_events import validate_event
from serverproc import ServerProcess, wait_for_entry
from support.openapi_spec import validate

WEATHER = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        # An enum keeps the forced call short: it always ends within a few tokens on the tiny model.
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Oslo", "Bergen"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]


class Answer(BaseModel):
    city: Literal["Oslo", "Bergen", "Tromso"]  # short, so the answer always ends within max_output_tokens


class Mood(BaseModel):
    mood: Literal["happy", "sad"]


def _sdk(server: ServerProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=secret, max_retries=0)


def test_create_is_a_spec_response_stored_and_counted(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    raw = client.responses.with_raw_response.create(
        model=model, input="Say hi", instructions="Be brief.", max_output_tokens=8, metadata={"case": "create"}
    )
    body = raw.http_response.json()
    validate("Response", body)
    response = raw.parse()
    assert response.id.startswith("resp_") and response.status in ("completed", "incomplete")
    assert response.output_text and response.output[0].id.startswith("msg_")
    assert response.instructions == "Be brief." and response.metadata == {"case": "create"}
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    entry = wait_for_entry(server, response.id)
    assert (entry.prompt_tokens, entry.completion_tokens, entry.outcome) == (usage.input_tokens, usage.output_tokens, "completed")

    stored = client.responses.with_raw_response.retrieve(response.id, include=["message.output_text.logprobs"])
    validate("Response", stored.http_response.json())
    assert stored.http_response.json() == body
    items = client.responses.input_items.list(response.id)
    validate("ResponseItemList", items.model_dump(mode="json", exclude_unset=True))
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [("message", "user", "Say hi")]  # type: ignore[union-attr]

    deleted = client.responses.with_raw_response.delete(response.id)
    assert deleted.http_response.json() == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_stream_events_are_the_spec_sequence_and_the_final_response_is_stored(client: openai.OpenAI, model: str, project_key: Any, server: ServerProcess) -> None:
    seen: list[str] = []
    deltas: list[str] = []
    # A short schema ends the answer before max_output_tokens: the SDK's final response needs `response.completed`.
    with client.responses.stream(model=model, input="Are you happy?", text_format=Mood, max_output_tokens=32) as stream:
        for event in stream:
            seen.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":  # stored before this event was sent
                assert client.responses.retrieve(event.response.id).status == "completed"
        final = stream.get_final_response()
    assert seen[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert seen[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert final.output_parsed is not None and final.output_parsed.mood in ("happy", "sad")
    assert "".join(deltas) == final.output_text == client.responses.retrieve(final.id).output_text

    # The wire itself: `event:` equals `type`, sequence numbers rise by one, every event is the spec's.
    headers = {"Authorization": f"Bearer {project_key.secret}"}
    payload = {
        "model": model, "input": "Hi", "max_output_tokens": 4, "stream": True, "store": False,
        "include": ["message.output_text.logprobs"], "top_logprobs": 2,
    }
    with httpx.stream("POST", f"{server.base_url}/responses", json=payload, headers=headers, timeout=120) as wire:
        blocks = wire.read().decode().strip().split("\n\n")
    events = []
    for block in blocks:
        head, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        validate_event(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    logprobs = [lp for e in events if e["type"] == "response.output_text.delta" for lp in e["logprobs"]]
    assert logprobs and all(len(lp["top_logprobs"]) == 2 for lp in logprobs)
    final_text = events[-1]["response"]["output"][0]["content"][0]
    assert [lp["token"] for lp in final_text["logprobs"]] == [lp["token"] for lp in logprobs]
    with pytest.raises(openai.NotFoundError):  # store: false kept nothing
        client.responses.retrieve(events[0]["response"]["id"])


def test_parse_fills_a_pydantic_model_through_the_grammar(client: openai.OpenAI, model: str) -> None:
    parsed = client.responses.parse(model=model, input="Name a city in Norway.", text_format=Answer, max_output_tokens=32)
    assert parsed.status == "completed" and parsed.output_parsed is not None and parsed.output_parsed.city in ("Oslo", "Bergen", "Tromso")
    assert parsed.text is not None and parsed.text.format.type == "json_schema"  # type: ignore[union-attr]


def test_a_chain_carries_a_function_call_and_its_output(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(
        model=model, input="What is the weather in Oslo?", tools=WEATHER, tool_choice="required", max_output_tokens=40  # type: ignore[arg-type]
    )
    validate("Response", first.model_dump(mode="json", exclude_unset=True))
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.id.startswith("fc_") and call.call_id.startswith("call_") and call.id != call.call_id  # type: ignore[union-attr]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)  # type: ignore[union-attr]

    follow_up: dict[str, Any] = {
        "model": model,
        "input": [{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}],  # type: ignore[union-attr]
        "tools": WEATHER,
        "tool_choice": "none",
    }
    second = client.responses.create(previous_response_id=first.id, max_output_tokens=8, **follow_up)
    assert second.previous_response_id == first.id and second.output_text
    # The whole chain was read again (the first input, its call, then the output): more than the output alone.
    alone = client.responses.input_tokens.count(**follow_up).input_tokens
    chained = client.responses.input_tokens.count(previous_response_id=first.id, **follow_up).input_tokens
    assert second.usage is not None and second.usage.input_tokens == chained > alone
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["function_call_output"]


def test_another_project_or_organization_gets_the_same_404(client: openai.OpenAI, model: str, server: ServerProcess, project_key: Any) -> None:
    mine = client.responses.create(model=model, input="Hi", max_output_tokens=2)
    other_project = str(server.cli("projects", "create", "Responses elsewhere", "--org", project_key.organization)["id"])
    strangers = [
        _sdk(server, str(server.cli("keys", "create", "--project", other_project)["secret"])),
        _sdk(server, str(server.cli("keys", "create", "--org", str(server.cli("orgs", "create", "Responses Inc")["id"]))["secret"])),
    ]
    for stranger in strangers:
        for attempt in (
            lambda: stranger.responses.retrieve(mine.id),
            lambda: stranger.responses.delete(mine.id),
            lambda: stranger.responses.input_items.list(mine.id),
        ):
            with pytest.raises(openai.NotFoundError) as info:
                attempt()
            assert info.value.body["message"] == f"Response with id '{mine.id}' not found."  # type: ignore[index]
        with pytest.raises(openai.NotFoundError) as chained:
            stranger.responses.create(model=model, input="Hi", previous_response_id=mine.id, max_output_tokens=2)
        assert chained.value.body["message"] == f"Previous response with id '{mine.id}' not found."  # type: ignore[index]
        assert chained.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert client.responses.retrieve(mine.id).id == mine.id


def test_an_unknown_model_is_its_404_before_any_stored_context_is_read(client: openai.OpenAI) -> None:
    """The model lookup and the request count come before the stored context is read: a bogus model
    naming a conversation or a chain reads nothing (were it read, this would be the conversation's 404)."""
    for attempt in (
        lambda: client.responses.create(model="no-such-model", input="Hi", conversation="conv_unknown"),
        lambda: client.responses.input_tokens.count(model="no-such-model", input="Hi", previous_response_id="resp_unknown"),
        lambda: client.responses.compact(model="no-such-model", input="Hi", previous_response_id="resp_unknown"),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            attempt()
        assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "What is it?"}, {"type": "input_image", "image_url": "https://example.com/a.png"}]}]}, "input[0].content[1]"),
        ({"reasoning": {"effort": "low"}}, "reasoning.effort"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"include": ["nonsense"]}, "include[0]"),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_the_field(client: openai.OpenAI, model: str, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**{"model": model, "input": "Hi", **fields})
    assert info.value.body["param"] == param  # type: ignore[index]


def test_input_tokens_counts_without_generating(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    counted = client.responses.input_tokens.count(model=model, input="Say hi", instructions="Be brief.")
    assert counted.object == "response.input_tokens" and counted.input_tokens > 5
    made = client.responses.create(model=model, input="Say hi", instructions="Be brief.", max_output_tokens=1)
    assert made.usage is not None and made.usage.input_tokens == counted.input_tokens


def test_input_items_pages_with_limit_order_and_after(client: openai.OpenAI, model: str) -> None:
    texts = [f"line {i}" for i in range(5)]
    response = client.responses.create(
        model=model, input=[{"role": "user", "content": t} for t in texts], max_output_tokens=1, store=True
    )
    page = client.responses.input_items.list(response.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == texts[:2] and page.has_more  # type: ignore[union-attr]
    rest = client.responses.input_items.list(response.id, limit=100, order="asc", after=page.last_id)
    assert [i.content[0].text for i in rest.data] == texts[2:] and not rest.has_more  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError):
        client.responses.input_items.list(response.id, limit=101)


def test_a_conversation_gives_the_context_and_receives_the_turn(client: openai.OpenAI, model: str) -> None:
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "My name is Ada."}])
    response = client.responses.create(model=model, conversation=conversation.id, input="What is my name?", max_output_tokens=4, store=False)
    body = response.model_dump(mode="json", exclude_unset=True)
    validate("Response", body)
    assert body["conversation"] == {"id": conversation.id}
    items = client.conversations.items.list(conversation.id, order="asc")
    assert [i.type for i in items.data] == ["message", "message", "message"]
    assert [i.role for i in items.data] == ["user", "user", "assistant"]  # type: ignore[union-attr]
    assert items.data[2].id == response.output[0].id
    with pytest.raises(openai.BadRequestError) as both:
        client.responses.create(model=model, conversation=conversation.id, previous_response_id=response.id, input="Hi")
    assert both.value.body["param"] == "conversation"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model, conversation="conv_unknown", input="Hi", max_output_tokens=2)


def _settled_entry(server: ServerProcess, request_id: str, timeout: float = 30.0) -> Any:
    """The ledger row of `request_id` once it is no longer pending."""
    deadline = time.monotonic() + timeout
    while (entry := wait_for_entry(server, request_id)).outcome == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    return entry


def _settled(client: openai.OpenAI, response_id: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        time.sleep(0.2)
    raise AssertionError(f"{response_id} still running")


def test_a_background_response_returns_queued_then_runs_to_the_end(client: openai.OpenAI, model: str) -> None:
    raw = client.responses.with_raw_response.create(model=model, input="Say hi", max_output_tokens=6, background=True)
    queued = raw.http_response.json()
    validate("Response", queued)
    assert queued["status"] == "queued" and queued["background"] is True and queued["output"] == []
    done = _settled(client, queued["id"])
    validate("Response", done.model_dump(mode="json", exclude_unset=True))
    assert done.status in ("completed", "incomplete") and done.output_text and done.usage.output_tokens > 0
    assert client.responses.cancel(done.id).status == done.status  # a finished response is returned as it is


def test_cancelling_a_background_response_is_idempotent(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    started = client.responses.create(model=model, input="Write a long story.", max_output_tokens=256, background=True)
    cancelled = client.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    assert client.responses.cancel(started.id).status == "cancelled"
    assert client.responses.retrieve(started.id).status == "cancelled"
    entry = _settled_entry(server, started.id)
    assert entry.outcome == "cancelled" and entry.completion_tokens < 256  # the generation stopped when it was cancelled
    plain = client.responses.create(model=model, input="Hi", max_output_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)


def test_responses_count_in_the_usage_api_completions_and_in_modelhost_usage(model: str, server: ServerProcess, project_key: Any) -> None:
    start = int(time.time()) // 60 * 60
    project = str(server.cli("projects", "create", "Responses usage", "--org", project_key.organization)["id"])
    tenant = _sdk(server, str(server.cli("keys", "create", "--project", project)["secret"]))
    made = tenant.responses.create(model=model, input="Hi", max_output_tokens=2)
    assert _settled_entry(server, made.id).outcome == "completed"
    admin = str(server.cli("keys", "create", "--kind", "admin", "--org", project_key.organization)["secret"])
    usage = httpx.get(
        f"{server.base_url}/organization/usage/completions",
        params={"start_time": start, "bucket_width": "1d", "project_ids[]": project},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert usage.status_code == 200, usage.text
    results = [r for bucket in usage.json()["data"] for r in bucket["results"]]
    assert made.usage is not None
    assert [(r["input_tokens"], r["output_tokens"], r["num_model_requests"]) for r in results] == [
        (made.usage.input_tokens, made.usage.output_tokens, 1)
    ]
    rows = server.cli("usage", "--org", project_key.organization)["data"]
    assert any(r["project_id"] == project and r["requests"] == 1 for r in rows)  # type: ignore[union-attr,index]


def _events(wire: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for block in wire.read().decode().strip().split("\n\n"):
        head, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        validate_event(event)
        events.append(event)
    return events


def test_a_streamed_background_response_can_be_read_again_from_any_point(client: openai.OpenAI, model: str, project_key: Any, server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {project_key.secret}"}
    payload = {"model": model, "input": "Say hi", "max_output_tokens": 6, "stream": True, "background": True}
    with httpx.stream("POST", f"{server.base_url}/responses", json=payload, headers=headers, timeout=120) as wire:
        live = _events(wire)
    assert [e["type"] for e in live[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert live[0]["response"]["status"] == "queued" and live[-1]["type"] in ("response.completed", "response.incomplete")
    assert [e["sequence_number"] for e in live] == list(range(len(live)))
    response_id = live[0]["response"]["id"]

    # Read again through the SDK, after the third event: the same events, from the store.
    again = client.responses.retrieve(response_id, stream=True, starting_after=2)
    assert [e.model_dump(mode="json", exclude_unset=True) for e in again] == live[3:]
    with client.responses.stream(response_id=response_id, starting_after=2) as resumed:
        assert [e.sequence_number for e in resumed] == list(range(3, len(live)))

    plain = client.responses.create(model=model, input="Hi", max_output_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.responses.retrieve(plain.id, stream=True)


def test_deleting_a_running_background_response_stops_it(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    started = client.responses.create(model=model, input="Write a long story.", max_output_tokens=256, background=True)
    client.responses.delete(started.id)
    entry = _settled_entry(server, started.id)
    assert entry.outcome == "cancelled" and entry.completion_tokens < 256
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(started.id)
