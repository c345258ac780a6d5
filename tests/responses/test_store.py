"""Stored responses on SQLite and PostgreSQL: a chain read back in order, scoped to its project, expired by the sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest

from modelhost.auth import Principal
from modelhost.errors import InvalidRequest, NotFound
from modelhost.protocol.responses import CreateResponse
from modelhost.responses import context as ctx
from modelhost.store import conversations
from modelhost.store import responses as store
from modelhost.store import tenancy
from store.databases import Database


def _principals(database: Database) -> tuple[Principal, Principal, Principal]:
    with database.sessions() as session:
        org = tenancy.create_organization(session, "Mine")
        other_org = tenancy.create_organization(session, "Theirs")
        session.commit()
        project = tenancy.default_project(session, org.id)
        other_project = tenancy.create_project(session, org.id, "Elsewhere")
        foreign = tenancy.default_project(session, other_org.id)
        session.commit()
        assert project is not None and foreign is not None
        ids = (org.id, project.id), (org.id, other_project.id), (other_org.id, foreign.id)
    return tuple(Principal(o, p, "user-1", "key_1", "project") for o, p in ids)  # type: ignore[return-value]


def _respond(database: Database, who: Principal, response_id: str, text: str, previous: str | None = None, *, days: int = 30) -> ctx.Context:
    body = CreateResponse.model_validate({"model": "m", "input": text, "previous_response_id": previous})
    now = tenancy.utcnow()
    context = ctx.load(database.sessions, who, body, now)
    output = [{"id": f"fc_{response_id}", "type": "function_call", "call_id": f"call_{response_id}", "name": "f", "arguments": "{}", "status": "completed"}]
    response = {"id": response_id, "status": "completed", "model": "m", "previous_response_id": previous, "output": output}
    ctx.save(database.sessions, who, response, context, now, days)
    return context


def test_a_chain_is_read_back_in_order_with_its_calls(database: Database) -> None:
    me, _, _ = _principals(database)
    _respond(database, me, "resp_1", "first")
    _respond(database, me, "resp_2", "second", "resp_1")
    third = _respond(database, me, "resp_3", "third", "resp_2")
    kinds = [(i["type"], i.get("call_id") or i["content"][0]["text"]) for i in third.items]
    assert kinds == [
        ("message", "first"),
        ("function_call", "call_resp_1"),
        ("message", "second"),
        ("function_call", "call_resp_2"),
        ("message", "third"),
    ]
    assert third.chain_length == 3


def test_another_project_or_organization_sees_nothing(database: Database) -> None:
    me, neighbour, stranger = _principals(database)
    _respond(database, me, "resp_a", "mine")
    now = tenancy.utcnow()
    for who in (neighbour, stranger):
        with pytest.raises(NotFound) as missing:
            ctx.get(database.sessions, who, "resp_a", now)
        assert missing.value.message == "Response with id 'resp_a' not found."
        with pytest.raises(NotFound):
            ctx.delete(database.sessions, who, "resp_a", now)
        with pytest.raises(NotFound) as chained:
            _respond(database, who, "resp_b", "theirs", "resp_a")
        assert chained.value.param == "previous_response_id"
    assert ctx.get(database.sessions, me, "resp_a", now)["id"] == "resp_a"


def test_purge_expired_deletes_responses_and_items_past_their_time(database: Database) -> None:
    me, _, _ = _principals(database)
    _respond(database, me, "resp_old", "old", days=1)
    _respond(database, me, "resp_new", "new", days=30)
    later = tenancy.utcnow() + timedelta(days=2)
    with pytest.raises(NotFound):  # expired is gone to readers before the sweep runs
        ctx.get(database.sessions, me, "resp_old", later)
    with database.sessions() as session:
        assert store.purge_expired(session, later) == 1
        session.commit()
        assert store.items(session, ["resp_old"]) == []
        assert len(store.items(session, ["resp_new"])) == 2
    assert ctx.get(database.sessions, me, "resp_new", later)["id"] == "resp_new"


def test_a_chain_too_long_is_refused_before_it_is_read(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    me, _, _ = _principals(database)
    monkeypatch.setattr(ctx, "MAX_CHAIN", 2)
    _respond(database, me, "resp_1", "first")
    _respond(database, me, "resp_2", "second", "resp_1")
    with pytest.raises(InvalidRequest) as refused:
        _respond(database, me, "resp_3", "third", "resp_2")
    assert refused.value.param == "previous_response_id"


def test_a_conversation_is_read_before_the_input_and_the_turn_is_added_to_it(database: Database) -> None:
    me, neighbour, _ = _principals(database)
    with database.sessions() as session:
        conversation = conversations.create_conversation(session, me.organization_id, me.project_id, {}, now=tenancy.utcnow())
        conversations.append_items(
            session, me.organization_id, me.project_id, conversation.id,
            [{"id": "msg_seed", "type": "message", "role": "user", "status": "completed", "content": [{"type": "input_text", "text": "seed"}]}],
        )
        session.commit()
        conversation_id = conversation.id
    body = CreateResponse.model_validate({"model": "m", "input": "next", "conversation": conversation_id})
    now = tenancy.utcnow()
    context = ctx.load(database.sessions, me, body, now)
    assert [i["content"][0]["text"] for i in context.items] == ["seed", "next"]
    output = [{"id": "msg_out", "type": "message", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": "ok", "annotations": []}]}]
    ctx.save(database.sessions, me, {"id": "resp_c", "status": "completed", "model": "m", "store": False, "output": output}, context, now, 30)
    with database.sessions() as session:
        held = conversations.conversation_items(session, me.organization_id, me.project_id, conversation_id)
        assert [i["id"] for i in held] == ["msg_seed", context.input[0]["id"], "msg_out"]
        assert store.items(session, ["resp_c"]) == []  # store: false kept no response
    with pytest.raises(NotFound) as missing:
        ctx.load(database.sessions, neighbour, body, now)
    assert missing.value.param == "conversation"
    again = CreateResponse.model_validate({"model": "m", "input": [{"type": "item_reference", "id": "msg_out"}], "conversation": conversation_id})
    with pytest.raises(InvalidRequest):  # the item is in the conversation already: refused before any work
        ctx.load(database.sessions, me, again, now)


def test_a_background_response_whose_replica_stopped_is_failed_not_running_forever(database: Database) -> None:
    me, _, _ = _principals(database)
    body = CreateResponse.model_validate({"model": "m", "input": "x", "background": True})
    now = tenancy.utcnow()
    context = ctx.load(database.sessions, me, body, now)
    queued = {"id": "resp_bg", "status": "queued", "model": "m", "background": True, "output": []}
    ctx.save(database.sessions, me, queued, context, now, 30, replica_id="replica-gone")
    assert ctx.get(database.sessions, me, "resp_bg", now)["status"] == "queued"  # nobody asked about liveness
    failed = ctx.get(database.sessions, me, "resp_bg", now, alive_since=now - timedelta(seconds=30))
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert not ctx.update(database.sessions, me, {**queued, "status": "completed"}, context)  # a late finish changes nothing
    assert ctx.cancel(database.sessions, me, "resp_bg", now)["status"] == "failed"


def _conversation_with(database: Database, who: Principal, text: str) -> str:
    with database.sessions() as session:
        conversation = conversations.create_conversation(session, who.organization_id, who.project_id, {}, now=tenancy.utcnow())
        item = {"id": "msg_seed", "type": "message", "role": "user", "status": "completed", "content": [{"type": "input_text", "text": text}]}
        conversations.append_items(session, who.organization_id, who.project_id, conversation.id, [item])
        session.commit()
        return conversation.id


def _unread(*_: object, **__: object) -> None:
    raise AssertionError("the stored items were read before the context's size was checked")


def test_a_conversation_too_large_is_refused_before_its_items_are_read(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    me, _, _ = _principals(database)
    conversation_id = _conversation_with(database, me, "x" * 500)
    monkeypatch.setattr(ctx, "MAX_CONTEXT_CHARACTERS", 400)
    monkeypatch.setattr(conversations, "conversation_items", _unread)
    body = CreateResponse.model_validate({"model": "m", "input": "next", "conversation": conversation_id})
    with pytest.raises(InvalidRequest) as refused:
        ctx.load(database.sessions, me, body, tenancy.utcnow())
    assert refused.value.param == "conversation" and "characters" in refused.value.message
    monkeypatch.setattr(ctx, "MAX_CONTEXT_CHARACTERS", 10_000)
    monkeypatch.setattr(ctx, "MAX_CONTEXT_ITEMS", 0)  # the item count is checked before reading too
    with pytest.raises(InvalidRequest) as refused:
        ctx.load(database.sessions, me, body, tenancy.utcnow())
    assert refused.value.param == "conversation" and "items" in refused.value.message


def test_a_chain_too_large_is_refused_before_its_items_are_read(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    me, _, _ = _principals(database)
    _respond(database, me, "resp_1", "x" * 500)
    monkeypatch.setattr(ctx, "MAX_CONTEXT_CHARACTERS", 400)
    monkeypatch.setattr(store, "items", _unread)
    with pytest.raises(InvalidRequest) as refused:
        _respond(database, me, "resp_2", "next", "resp_1")
    assert refused.value.param == "previous_response_id" and "characters" in refused.value.message


def test_an_input_naming_one_item_twice_is_refused_before_any_work(database: Database) -> None:
    me, _, _ = _principals(database)
    _respond(database, me, "resp_1", "first")
    conversation_id = _conversation_with(database, me, "seed")
    message = {"id": "msg_twice", "type": "message", "role": "user", "content": "hi"}
    reference = {"type": "item_reference", "id": "fc_resp_1"}
    for input in ([message, message], [reference, reference]):
        body = CreateResponse.model_validate({"model": "m", "input": input, "conversation": conversation_id})
        with pytest.raises(InvalidRequest) as refused:
            ctx.load(database.sessions, me, body, tenancy.utcnow())
        assert refused.value.param == "input[1]" and "twice" in refused.value.message
