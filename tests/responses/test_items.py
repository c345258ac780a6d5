"""Items → turns, and the request's input → stored items: what the model reads, and the 400s that name a part."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelhost.errors import InvalidRequest, NotFound
from modelhost.pipeline.inputs import CallRecord, Turn
from modelhost.protocol.responses import CreateResponse
from modelhost.responses import items, request


def _input(value: object) -> list[dict[str, object]]:
    body = CreateResponse.model_validate({"model": "m", "input": value})
    return items.input_items(body.input, lambda ids: {"msg_old": {"id": "msg_old", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "earlier"}]}})


def test_a_string_input_is_one_user_message_with_an_id() -> None:
    [item] = _input("Hi")
    assert item["id"].startswith("msg_") and item["role"] == "user"
    assert item["content"] == [{"type": "input_text", "text": "Hi"}]


def test_calls_join_the_assistant_turn_before_them_and_outputs_answer_them() -> None:
    stored = _input(
        [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Oslo?"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
            {"type": "item_reference", "id": "msg_old"},
        ]
    )
    assert [i["id"][:3] for i in stored] == ["msg", "msg", "msg", "fc_", "fc_", "fco", "fco", "msg"]
    assert items.to_turns(stored) == (
        Turn("developer", "Be brief."),
        Turn("user", "Weather in Oslo?"),
        Turn("assistant", "Checking.", calls=(CallRecord("call_1", "weather", '{"city":"Oslo"}'), CallRecord("call_2", "time", "{}"))),
        Turn("tool", "sunny", tool_call_id="call_1"),
        Turn("tool", "noon", tool_call_id="call_2"),
        Turn("user", "earlier"),
    )


def test_a_call_without_an_assistant_message_is_an_assistant_turn_of_its_own() -> None:
    stored = _input([{"role": "user", "content": "x"}, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}])
    assert items.to_turns(stored)[1] == Turn("assistant", "", calls=(CallRecord("c", "f", "{}"),))


def test_an_image_part_is_a_400_naming_the_part() -> None:
    with pytest.raises(InvalidRequest) as caught:
        _input([{"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": "https://x/y.png"}]}])
    assert caught.value.param == "input[0].content[1]" and "input_image" in caught.value.message


def test_an_unsupported_item_and_an_unknown_reference_are_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        _input([{"role": "user", "content": "x"}, {"type": "web_search_call", "id": "ws_1", "status": "completed"}])
    assert caught.value.param == "input[1]"
    with pytest.raises(NotFound) as missing:
        _input([{"type": "item_reference", "id": "msg_nope"}])
    assert missing.value.param == "input[0]"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}, "tools[1]"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"previous_response_id": "resp_1", "conversation": "conv_1"}, "conversation"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ],
)
def test_what_this_server_cannot_do_is_a_400_naming_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request.check(CreateResponse.model_validate({"model": "m", "input": "x", **body}))
    assert caught.value.param == param


def test_instructions_lead_and_formats_map_onto_chat_inputs() -> None:
    body = CreateResponse.model_validate(
        {
            "model": "m",
            "instructions": "Answer in JSON.",
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}},
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "function", "name": "f"},
            "max_output_tokens": 16,
        }
    )
    chat = request.chat_input(body, (Turn("user", "x"),))
    assert chat.turns[0] == Turn("system", "Answer in JSON.") and chat.max_tokens == 16
    assert chat.output is not None and (chat.output.kind, chat.output.name, chat.output.strict) == ("json_schema", "answer", True)
    assert chat.tools is not None and chat.tools.named and chat.tools.choice == "f"
    assert (chat.params.messages, chat.params.response_format, chat.params.max_tokens) == ("input", "text.format", "max_output_tokens")


def test_a_page_of_items_follows_order_and_after() -> None:
    stored = [{"id": f"msg_{i}"} for i in range(5)]
    first = items.page(stored, limit=2, order="desc", after=None)
    assert [i["id"] for i in first["data"]] == ["msg_4", "msg_3"] and first["has_more"]
    rest = items.page(stored, limit=10, order="desc", after=first["last_id"])
    assert [i["id"] for i in rest["data"]] == ["msg_2", "msg_1", "msg_0"] and not rest["has_more"]


@pytest.mark.parametrize(
    "body",
    [{"tool_choice": {"type": {}}}, {"tools": [{"type": [1]}, False, "x"]}, {"input": [{"type": [1]}, 0, {"type": {}}]}],
)
def test_a_type_that_is_not_a_string_is_a_validation_error_not_a_crash(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CreateResponse.model_validate({"model": "m", **body})
