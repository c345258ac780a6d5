"""Stored responses and conversations across two replicas sharing PostgreSQL: what one replica
stored, the other reads at once (no log shipping, no delay), and another project gets the same 404
through either. Generations are 1–8 tokens (2 shared cores)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from serverproc import MODEL, ServerProcess
from support.openapi_spec import validate

from .conftest import new_tenant

Pair = tuple[ServerProcess, ServerProcess]


def _json(raw: Any) -> dict[str, Any]:
    """The body exactly as the server sent it (the SDK's models fill in fields the server left out)."""
    return raw.http_response.json()  # type: ignore[no-any-return]


def test_a_chain_stored_on_one_replica_continues_at_once_on_the_other(pair: Pair) -> None:
    a, b = pair
    tenant = new_tenant(a, "Chain across replicas")
    on_a, on_b = tenant.client(a), tenant.client(b)
    first = _json(on_a.responses.with_raw_response.create(model=MODEL, input="My name is Ada. Remember it.", max_output_tokens=8, store=True))
    validate("Response", first)
    assert first["status"] in ("completed", "incomplete") and first["output"]

    follow_up = {"model": MODEL, "input": "What is my name?"}
    second = _json(on_b.responses.with_raw_response.create(previous_response_id=first["id"], max_output_tokens=2, **follow_up))
    validate("Response", second)
    assert second["previous_response_id"] == first["id"]
    # B read the whole chain (A's input and output) before the new input: more tokens than the input alone.
    alone = on_b.responses.input_tokens.count(**follow_up).input_tokens
    chained = on_b.responses.input_tokens.count(previous_response_id=first["id"], **follow_up).input_tokens
    assert second["usage"]["input_tokens"] == chained > alone + first["usage"]["output_tokens"]

    # B serves A's objects as A stored them, and A serves B's.
    retrieved = _json(on_b.responses.with_raw_response.retrieve(first["id"]))
    validate("Response", retrieved)
    assert retrieved == first
    assert _json(on_a.responses.with_raw_response.retrieve(second["id"])) == second
    first_items = _json(on_b.responses.input_items.with_raw_response.list(first["id"], order="asc"))
    validate("ResponseItemList", first_items)
    assert [item["content"][0]["text"] for item in first_items["data"]] == ["My name is Ada. Remember it."]
    second_items = _json(on_b.responses.input_items.with_raw_response.list(second["id"], order="asc"))
    validate("ResponseItemList", second_items)
    assert [item["content"][0]["text"] for item in second_items["data"]] == ["What is my name?"]

    # Back on A, a third turn reads the chain that now runs through B's response.
    third = _json(on_a.responses.with_raw_response.create(previous_response_id=second["id"], model=MODEL, input="Thanks.", max_output_tokens=1))
    validate("Response", third)
    assert third["usage"]["input_tokens"] > second["usage"]["input_tokens"] + second["usage"]["output_tokens"]


def test_a_conversation_made_on_one_replica_takes_turns_through_both(pair: Pair) -> None:
    a, b = pair
    tenant = new_tenant(a, "Conversation across replicas")
    on_a, on_b = tenant.client(a), tenant.client(b)
    conversation = _json(on_a.conversations.with_raw_response.create(items=[{"type": "message", "role": "user", "content": "My name is Ada."}]))
    validate("ConversationResource", conversation)

    on_a_turn = _json(on_a.responses.with_raw_response.create(model=MODEL, conversation=conversation["id"], input="Hello.", max_output_tokens=2))
    on_b_turn = _json(on_b.responses.with_raw_response.create(model=MODEL, conversation=conversation["id"], input="What is my name?", max_output_tokens=2))
    for turn in (on_a_turn, on_b_turn):
        validate("Response", turn)
        assert turn["conversation"] == {"id": conversation["id"]}
    # B's turn read the conversation as A left it: its first item and A's whole turn.
    assert on_b_turn["usage"]["input_tokens"] > on_a_turn["usage"]["input_tokens"] + on_a_turn["usage"]["output_tokens"]

    items = _json(on_a.conversations.items.with_raw_response.list(conversation["id"], order="asc"))
    validate("ConversationItemList", items)
    assert [(i["type"], i["role"]) for i in items["data"]] == [
        ("message", "user"), ("message", "user"), ("message", "assistant"), ("message", "user"), ("message", "assistant")
    ]
    assert [i["content"][0]["text"] for i in items["data"] if i["role"] == "user"] == ["My name is Ada.", "Hello.", "What is my name?"]
    assert [i["id"] for i in items["data"] if i["role"] == "assistant"] == [on_a_turn["output"][0]["id"], on_b_turn["output"][0]["id"]]
    assert _json(on_b.conversations.items.with_raw_response.list(conversation["id"], order="asc")) == items


def test_another_project_or_organization_gets_the_same_404_through_the_other_replica(pair: Pair) -> None:
    a, b = pair
    owner = new_tenant(a, "Owner")
    mine = owner.client(a).responses.create(model=MODEL, input="Hi", max_output_tokens=1)
    conversation = owner.client(a).conversations.create()
    strangers = [
        new_tenant(b, "Neighbour", owner.organization),
        new_tenant(b, "Stranger", str(b.cli("orgs", "create", "Stranger Inc")["id"])),
    ]
    for stranger in strangers:
        client = stranger.client(b)
        for attempt in (
            lambda: client.responses.retrieve(mine.id),
            lambda: client.responses.input_items.list(mine.id),
            lambda: client.responses.delete(mine.id),
        ):
            with pytest.raises(openai.NotFoundError) as info:
                attempt()
            assert info.value.body["message"] == f"Response with id '{mine.id}' not found."  # type: ignore[index]
        with pytest.raises(openai.NotFoundError) as unknown:
            client.responses.retrieve("resp_" + "0" * 24)
        assert unknown.value.body["message"] == f"Response with id '{'resp_' + '0' * 24}' not found."  # type: ignore[index]
        with pytest.raises(openai.NotFoundError) as chained:
            client.responses.create(model=MODEL, input="Hi", previous_response_id=mine.id, max_output_tokens=1)
        assert chained.value.body["param"] == "previous_response_id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model=MODEL, input="Hi", conversation=conversation.id, max_output_tokens=1)
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(conversation.id)
    assert owner.client(b).responses.retrieve(mine.id).id == mine.id  # still there for its own project, on B
