"""The Conversations API through the official Python SDK against a real server (no generation).

Every object and list the server sends is validated against the spec's schemas.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from serverproc import ServerProcess
from support.openapi_spec import validate

USER_HI = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}


def _json(raw: Any) -> Any:
    return raw.http_response.json()


def _sdk(server: ServerProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=secret, max_retries=0)


def _message(text: str, role: str = "user") -> dict[str, object]:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def _status_error(call: Any, *args: Any, **kwargs: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call(*args, **kwargs)
    return caught.value


def _message_of(error: openai.APIStatusError) -> str:
    return str(error.body["message"])  # type: ignore[index]  # the SDK's `message` adds "Error code: …"


def _items(client: openai.OpenAI, conversation_id: str, **query: Any) -> list[dict[str, Any]]:
    return _json(client.conversations.items.with_raw_response.list(conversation_id, **query))["data"]  # type: ignore[no-any-return]


def test_a_conversation_is_created_read_updated_and_deleted(client: openai.OpenAI) -> None:
    raw = client.conversations.with_raw_response.create(metadata={"topic": "demo"})
    body = _json(raw)
    validate("ConversationResource", body)
    assert list(body) == ["id", "object", "created_at", "metadata"]
    conversation = raw.parse()
    assert conversation.id.startswith("conv_") and conversation.object == "conversation"
    assert conversation.metadata == {"topic": "demo"}

    got = client.conversations.with_raw_response.retrieve(conversation.id)
    validate("ConversationResource", _json(got))
    assert _json(got) == body

    updated = client.conversations.with_raw_response.update(conversation.id, metadata={"topic": "other", "n": "2"})
    validate("ConversationResource", _json(updated))
    assert _json(updated)["metadata"] == {"topic": "other", "n": "2"}
    assert client.conversations.retrieve(conversation.id).metadata == {"topic": "other", "n": "2"}

    deleted = client.conversations.with_raw_response.delete(conversation.id)
    validate("DeletedConversationResource", _json(deleted))
    assert _json(deleted) == {"id": conversation.id, "object": "conversation.deleted", "deleted": True}


def test_an_empty_body_makes_an_empty_conversation(client: openai.OpenAI) -> None:
    conversation = client.conversations.create()
    assert conversation.metadata == {}
    listed = _json(client.conversations.items.with_raw_response.list(conversation.id))
    assert listed == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_initial_items_get_ids_keep_theirs_and_stay_in_order(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(
        items=[
            {"type": "message", "role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": "Sunny.", "id": "msg_mine"},
        ]
    )
    raw = client.conversations.items.with_raw_response.list(conversation.id, order="asc")
    body = _json(raw)
    validate("ConversationItemList", body)
    items = body["data"]
    assert [item["id"][: item["id"].index("_") + 1] for item in items[:4]] == ["msg_", "msg_", "fc_", "fco_"]
    assert items[4]["id"] == "msg_mine"
    assert (body["first_id"], body["last_id"], body["has_more"]) == (items[0]["id"], "msg_mine", False)
    assert items[0] == {
        "id": items[0]["id"],
        "type": "message",
        "role": "system",
        "status": "completed",
        "content": [{"type": "input_text", "text": "Be brief."}],
    }
    assert items[2] | {"id": None} == {
        "id": None,
        "type": "function_call",
        "call_id": "call_1",
        "name": "weather",
        "arguments": '{"city": "Paris"}',
        "status": "completed",
    }
    assert items[3]["output"] == "sunny" and items[3]["call_id"] == "call_1"
    assert items[4]["content"] == [{"type": "output_text", "text": "Sunny.", "annotations": [], "logprobs": []}]
    parsed = raw.parse()  # the SDK's own types read every item
    assert [item.type for item in parsed.data] == ["message", "message", "function_call", "function_call_output", "message"]


def test_items_are_added_read_and_deleted(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[USER_HI])
    raw = client.conversations.items.with_raw_response.create(
        conversation.id, items=[_message("How are you?"), _message("Fine.", "assistant")]
    )
    added = _json(raw)
    validate("ConversationItemList", added)
    assert [item["content"][0]["text"] for item in added["data"]] == ["How are you?", "Fine."]
    assert (added["first_id"], added["last_id"]) == (added["data"][0]["id"], added["data"][1]["id"])

    newest_first = _items(client, conversation.id)  # the default order is desc
    assert [item["content"][0]["text"] for item in newest_first] == ["Fine.", "How are you?", "Hello!"]

    item_id = added["data"][0]["id"]
    got = client.conversations.items.with_raw_response.retrieve(item_id, conversation_id=conversation.id)
    validate("ConversationItem", _json(got))
    assert _json(got) == added["data"][0]

    after_delete = client.conversations.items.with_raw_response.delete(item_id, conversation_id=conversation.id)
    validate("ConversationResource", _json(after_delete))
    assert _json(after_delete)["id"] == conversation.id
    assert [item["content"][0]["text"] for item in _items(client, conversation.id, order="asc")] == ["Hello!", "Fine."]
    missing = _status_error(client.conversations.items.retrieve, item_id, conversation_id=conversation.id)
    assert (missing.status_code, _message_of(missing)) == (404, f"Item with id '{item_id}' not found.")
    again = _status_error(client.conversations.items.delete, item_id, conversation_id=conversation.id)
    assert again.status_code == 404


def test_pages_follow_after_in_both_orders(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[_message(f"m{n}") for n in range(20)])
    client.conversations.items.create(conversation.id, items=[_message(f"m{n}") for n in range(20, 25)])

    def texts(page: list[dict[str, Any]]) -> list[str]:
        return [item["content"][0]["text"] for item in page]

    first = _json(client.conversations.items.with_raw_response.list(conversation.id, order="asc", limit=10))
    validate("ConversationItemList", first)
    assert texts(first["data"]) == [f"m{n}" for n in range(10)] and first["has_more"] is True
    second = _json(client.conversations.items.with_raw_response.list(conversation.id, order="asc", limit=10, after=first["last_id"]))
    assert texts(second["data"]) == [f"m{n}" for n in range(10, 20)] and second["has_more"] is True
    desc = _json(client.conversations.items.with_raw_response.list(conversation.id, order="desc", limit=3, after=second["first_id"]))
    validate("ConversationItemList", desc)
    assert texts(desc["data"]) == ["m9", "m8", "m7"] and desc["has_more"] is True
    # The SDK's auto-pagination walks every page.
    walked = [item.content[0].text for item in client.conversations.items.list(conversation.id, order="asc", limit=7)]  # type: ignore[union-attr]
    assert walked == [f"m{n}" for n in range(25)]

    for bad in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}, {"after": "msg_notinthislist"}):
        error = _status_error(client.conversations.items.list, conversation.id, **bad)
        assert error.status_code == 400 and error.body["param"] == next(iter(bad)), (bad, error.body)  # type: ignore[index]


def test_at_most_twenty_items_per_request(client: openai.OpenAI) -> None:
    error = _status_error(client.conversations.create, items=[_message(f"m{n}") for n in range(21)])
    assert error.status_code == 400 and error.body["param"] == "items"  # type: ignore[index]
    conversation = client.conversations.create()
    error = _status_error(client.conversations.items.create, conversation.id, items=[_message(f"m{n}") for n in range(21)])
    assert error.status_code == 400 and error.body["param"] == "items"  # type: ignore[index]
    assert _items(client, conversation.id) == []


def test_metadata_is_bounded_as_at_openai(client: openai.OpenAI) -> None:
    for metadata in ({f"k{n}": "v" for n in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        error = _status_error(client.conversations.create, metadata=metadata)
        assert error.status_code == 400 and error.body["param"] == "metadata", error.body  # type: ignore[index]
    conversation = client.conversations.create(metadata={f"k{n}": "v" * 512 for n in range(16)})
    error = _status_error(client.conversations.update, conversation.id, metadata={"k" * 65: "v"})
    assert error.status_code == 400 and error.body["param"] == "metadata"  # type: ignore[index]


def test_image_parts_and_unsupported_items_are_refused_by_name(client: openai.OpenAI) -> None:
    image = {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "auto"}
    message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is it?"}, image]}
    error = _status_error(client.conversations.create, items=[USER_HI, message])
    assert error.status_code == 400 and error.body["param"] == "items[1].content[1]"  # type: ignore[index]
    assert "input_image" in _message_of(error)
    conversation = client.conversations.create()
    error = _status_error(client.conversations.items.create, conversation.id, items=[{"type": "web_search_call", "id": "ws_1", "status": "completed"}])  # type: ignore[list-item]
    assert error.status_code == 400 and error.body["param"] == "items[0]"  # type: ignore[index]
    assert _items(client, conversation.id) == []  # nothing of a refused request is kept


def test_an_id_already_in_the_conversation_is_refused(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[{**USER_HI, "id": "msg_once"}])
    error = _status_error(client.conversations.items.create, conversation.id, items=[{**USER_HI, "id": "msg_once"}])
    assert error.status_code == 400 and "Duplicate item found with id 'msg_once'" in _message_of(error)


def test_include_is_accepted_and_checked(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[USER_HI])
    include = ["message.output_text.logprobs"]
    added = client.conversations.items.with_raw_response.create(conversation.id, items=[_message("Hi.", "assistant")], include=include)  # type: ignore[list-item]
    validate("ConversationItemList", _json(added))
    item_id = _json(added)["data"][0]["id"]
    got = _json(client.conversations.items.with_raw_response.retrieve(item_id, conversation_id=conversation.id, include=include))  # type: ignore[list-item]
    validate("ConversationItem", got)
    listed = _items(client, conversation.id, include=include)
    assert [item["id"] for item in listed][0] == item_id
    error = _status_error(client.conversations.items.list, conversation.id, include=["everything"])
    assert error.status_code == 400 and error.body["param"] == "include"  # type: ignore[index]


def test_a_deleted_conversation_is_gone_with_its_items(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(items=[USER_HI])
    item_id = _items(client, conversation.id)[0]["id"]
    client.conversations.delete(conversation.id)
    calls = [
        (client.conversations.retrieve, (conversation.id,), {}),
        (client.conversations.update, (conversation.id,), {"metadata": {"a": "b"}}),
        (client.conversations.delete, (conversation.id,), {}),
        (client.conversations.items.list, (conversation.id,), {}),
        (client.conversations.items.create, (conversation.id,), {"items": [USER_HI]}),
        (client.conversations.items.retrieve, (item_id,), {"conversation_id": conversation.id}),
        (client.conversations.items.delete, (item_id,), {"conversation_id": conversation.id}),
    ]
    for call, args, kwargs in calls:
        error = _status_error(call, *args, **kwargs)
        assert (error.status_code, _message_of(error)) == (404, f"Conversation with id '{conversation.id}' not found."), call


def _tenant_key(server: ServerProcess, organization: str, *, other_organization: bool) -> str:
    if other_organization:
        organization = str(server.cli("orgs", "create", "Conversations elsewhere")["id"])
        return str(server.cli("keys", "create", "--org", organization)["secret"])
    project = str(server.cli("projects", "create", "Conversations next door", "--org", organization)["id"])
    return str(server.cli("keys", "create", "--project", project)["secret"])


@pytest.mark.parametrize("other_organization", [False, True], ids=["other-project", "other-organization"])
def test_another_project_or_organization_gets_the_404_of_an_unknown_id(
    client: openai.OpenAI, server: ServerProcess, project_key: Any, other_organization: bool
) -> None:
    conversation = client.conversations.create(items=[USER_HI], metadata={"secret": "yes"})
    item_id = _items(client, conversation.id)[0]["id"]
    stranger = _sdk(server, _tenant_key(server, project_key.organization, other_organization=other_organization))
    for conversation_id in (conversation.id, "conv_doesnotexist"):
        calls = [
            (stranger.conversations.retrieve, (conversation_id,), {}),
            (stranger.conversations.update, (conversation_id,), {"metadata": {"a": "b"}}),
            (stranger.conversations.delete, (conversation_id,), {}),
            (stranger.conversations.items.list, (conversation_id,), {}),
            (stranger.conversations.items.create, (conversation_id,), {"items": [USER_HI]}),
            (stranger.conversations.items.retrieve, (item_id,), {"conversation_id": conversation_id}),
            (stranger.conversations.items.delete, (item_id,), {"conversation_id": conversation_id}),
        ]
        for call, args, kwargs in calls:
            error = _status_error(call, *args, **kwargs)
            assert error.status_code == 404, call
            assert error.body == {  # the same answer, to the byte, as for an id that never existed
                "message": f"Conversation with id '{conversation_id}' not found.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
    # The owner still has all of it.
    assert client.conversations.retrieve(conversation.id).metadata == {"secret": "yes"}
    assert [item["id"] for item in _items(client, conversation.id)] == [item_id]


def test_admin_keys_cannot_use_conversations(server: ServerProcess, client: openai.OpenAI) -> None:
    admin = str(server.cli("keys", "create", "--kind", "admin")["secret"])
    error = _status_error(_sdk(server, admin).conversations.create)
    assert error.status_code in (401, 403)


def test_an_item_reference_copies_a_stored_response_item(client: openai.OpenAI, model: str) -> None:
    response = client.responses.create(model=model, input="Say hi.", max_output_tokens=16)
    output_id = response.output[0].id
    conversation = client.conversations.create(items=[{"type": "item_reference", "id": output_id}])
    [item] = _items(client, conversation.id)
    validate("ConversationItem", item)
    assert (item["id"], item["type"], item["role"]) == (output_id, "message", "assistant")
    error = _status_error(client.conversations.items.create, conversation.id, items=[{"type": "item_reference", "id": "msg_nowhere"}])
    assert (error.status_code, error.body["param"]) == (404, "items[0]")  # type: ignore[index]
