"""Stored chat completions in the store: tenancy, listing filters and pages, metadata, messages, and the retention sweep.

Runs on SQLite and PostgreSQL (the `database` fixture), through the functions the routes call.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from modelhost.auth import Principal
from modelhost.chat_completions import stored
from modelhost.errors import InvalidRequest, NotFound
from modelhost.protocol.chat import ChatCompletionRequest
from modelhost.protocol.stored_chat import ChatCompletionListQuery, ChatCompletionUpdateRequest, MessageListQuery
from modelhost.store import retention, tenancy
from modelhost.store.chat_completions import StoredChatMessage, StoredChatMetadata
from store.databases import Database

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _principals(database: Database) -> tuple[Principal, Principal, Principal]:
    """A project, another project of its organization, and a project of another organization."""
    with database.sessions() as session:
        org = tenancy.create_organization(session, "Org")
        mine, sibling = tenancy.create_project(session, org.id, "Mine"), tenancy.create_project(session, org.id, "Sibling")
        other = tenancy.create_organization(session, "Elsewhere")
        foreign = tenancy.create_project(session, other.id, "Foreign")
        session.commit()
        return (
            Principal(org.id, mine.id, "user-1", "key_1", "project"),
            Principal(org.id, sibling.id, "user-1", "key_2", "project"),
            Principal(other.id, foreign.id, "user-2", "key_3", "project"),
        )


def _save(database: Database, who: Principal, ident: str, *, at: datetime = NOW, model: str = "m", **metadata: str) -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": model,
            "store": True,
            "metadata": metadata,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]},
                {
                    "role": "assistant",
                    "content": [{"type": "refusal", "refusal": "No."}],
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "content": "ok", "tool_call_id": "call_1"},
            ],
        }
    )
    completion = {
        "id": ident,
        "object": "chat.completion",
        "created": int(at.timestamp()),
        "model": model,
        "system_fingerprint": "fp_x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    stored.save(database.sessions, who, request, completion, retention_days=30, now=at)


def _ids(database: Database, who: Principal, metadata: dict[str, str] | None = None, **query: object) -> list[str]:
    listing = stored.list_completions(database.sessions, who, ChatCompletionListQuery.model_validate(query), metadata or {})
    return [c.id for c in listing.data]


def test_a_stored_completion_reads_back_as_answered_with_its_metadata(database: Database) -> None:
    mine, _, _ = _principals(database)
    _save(database, mine, "chatcmpl-a", topic="demo")
    found = stored.get(database.sessions, mine, "chatcmpl-a")
    body = found.model_dump(mode="json", exclude_unset=True)
    assert body["metadata"] == {"topic": "demo"} and body["choices"][0]["message"] == {"role": "assistant", "content": "hi", "refusal": None}
    assert "tool_calls" not in body["choices"][0]["message"]  # not answered with it: not added on the way back


def test_another_project_or_organization_gets_the_unknown_id_404(database: Database) -> None:
    mine, sibling, foreign = _principals(database)
    _save(database, mine, "chatcmpl-a")
    for who in (sibling, foreign):
        for call in (
            lambda: stored.get(database.sessions, who, "chatcmpl-a"),
            lambda: stored.update(database.sessions, who, "chatcmpl-a", ChatCompletionUpdateRequest(metadata={"x": "y"})),
            lambda: stored.delete(database.sessions, who, "chatcmpl-a"),
            lambda: stored.messages(database.sessions, who, "chatcmpl-a", MessageListQuery()),
        ):
            with pytest.raises(NotFound) as info:
                call()
            assert info.value.message == "No chat completion found with id 'chatcmpl-a'."
        assert _ids(database, who) == []
    assert stored.get(database.sessions, mine, "chatcmpl-a").metadata == {}


def test_listing_filters_by_model_and_every_metadata_pair_and_pages_both_ways(database: Database) -> None:
    mine, _, _ = _principals(database)
    for i, (model, topic) in enumerate([("m", "a"), ("m", "b"), ("other", "a"), ("m", "a")]):
        _save(database, mine, f"chatcmpl-{i}", at=NOW + timedelta(seconds=i), model=model, topic=topic, n=str(i))
    assert _ids(database, mine) == ["chatcmpl-0", "chatcmpl-1", "chatcmpl-2", "chatcmpl-3"]
    assert _ids(database, mine, order="desc", limit=2) == ["chatcmpl-3", "chatcmpl-2"]
    assert _ids(database, mine, order="desc", after="chatcmpl-2") == ["chatcmpl-1", "chatcmpl-0"]
    assert _ids(database, mine, model="m") == ["chatcmpl-0", "chatcmpl-1", "chatcmpl-3"]
    assert _ids(database, mine, {"topic": "a"}) == ["chatcmpl-0", "chatcmpl-2", "chatcmpl-3"]
    assert _ids(database, mine, {"topic": "a", "n": "3"}, model="m") == ["chatcmpl-3"]
    with pytest.raises(InvalidRequest) as info:
        _ids(database, mine, after="chatcmpl-nope")
    assert info.value.param == "after"


def test_updating_replaces_the_metadata_and_filters_see_it(database: Database) -> None:
    mine, _, _ = _principals(database)
    _save(database, mine, "chatcmpl-a", topic="old", keep="no")
    updated = stored.update(database.sessions, mine, "chatcmpl-a", ChatCompletionUpdateRequest(metadata={"topic": "new"}))
    assert updated.metadata == {"topic": "new"} == stored.get(database.sessions, mine, "chatcmpl-a").metadata
    assert _ids(database, mine, {"topic": "old"}) == [] and _ids(database, mine, {"topic": "new"}) == ["chatcmpl-a"]
    assert stored.update(database.sessions, mine, "chatcmpl-a", ChatCompletionUpdateRequest(metadata=None)).metadata == {}


def test_messages_are_the_request_messages_with_ids_in_pages(database: Database) -> None:
    mine, _, _ = _principals(database)
    _save(database, mine, "chatcmpl-a")
    first = stored.messages(database.sessions, mine, "chatcmpl-a", MessageListQuery(limit=2))
    assert [m.id for m in first.data] == ["chatcmpl-a-0", "chatcmpl-a-1"] and first.has_more
    system, user = first.data
    assert (system.role, system.content, system.content_parts) == ("system", "Be brief.", None)
    assert user.content == "Say hi" and [p.text for p in user.content_parts or []] == ["Say ", "hi"]
    rest = stored.messages(database.sessions, mine, "chatcmpl-a", MessageListQuery(limit=2, after=first.last_id))
    assistant, tool = rest.data
    assert not rest.has_more and assistant.tool_calls and assistant.tool_calls[0].id == "call_1"
    assert (assistant.content, assistant.content_parts) == ("No.", [])  # a refusal part is text, not a spec part
    assert tool.model_dump()["tool_call_id"] == "call_1"
    newest = stored.messages(database.sessions, mine, "chatcmpl-a", MessageListQuery(order="desc", limit=1))
    assert [m.id for m in newest.data] == ["chatcmpl-a-3"]


def test_deleting_takes_the_messages_and_metadata_with_it(database: Database) -> None:
    mine, _, _ = _principals(database)
    _save(database, mine, "chatcmpl-a", topic="x")
    deleted = stored.delete(database.sessions, mine, "chatcmpl-a")
    assert deleted.model_dump() == {"object": "chat.completion.deleted", "id": "chatcmpl-a", "deleted": True}
    with pytest.raises(NotFound):
        stored.get(database.sessions, mine, "chatcmpl-a")
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StoredChatMessage)) == 0
        assert session.scalar(select(func.count()).select_from(StoredChatMetadata)) == 0


def test_the_sweep_deletes_what_expired_and_keeps_the_rest(database: Database) -> None:
    mine, _, _ = _principals(database)
    _save(database, mine, "chatcmpl-old", at=NOW, topic="x")
    _save(database, mine, "chatcmpl-new", at=NOW + timedelta(days=1), topic="x")
    assert retention.purge_expired(database.sessions, NOW + timedelta(days=30) - timedelta(seconds=1))["chat_completions"] == 0
    swept = retention.purge_expired(database.sessions, NOW + timedelta(days=30))
    assert swept == {"chat_completions": 1, "conversations": 0, "responses": 0, "files": 0}  # every kind of stored object
    assert _ids(database, mine) == ["chatcmpl-new"]
    with database.sessions() as session:  # the old one's messages and metadata went with it
        assert session.scalar(select(func.count()).select_from(StoredChatMessage)) == 4
        assert session.scalar(select(func.count()).select_from(StoredChatMetadata)) == 1
    assert retention.purge_expired(database.sessions, NOW + timedelta(days=30))["chat_completions"] == 0  # idempotent


def test_an_expired_completion_not_yet_swept_is_neither_read_nor_listed(database: Database) -> None:
    mine, _, _ = _principals(database)
    _save(database, mine, "chatcmpl-stale", at=datetime.now(timezone.utc) - timedelta(days=31))
    _save(database, mine, "chatcmpl-live")
    assert _ids(database, mine) == ["chatcmpl-live"]
    with pytest.raises(NotFound):
        stored.get(database.sessions, mine, "chatcmpl-stale")
