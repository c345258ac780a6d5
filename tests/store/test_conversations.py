"""Conversations in the store: items kept in order, tenancy, the item cap, and the retention sweep.

Runs on SQLite and PostgreSQL (the `database` fixture).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from modelhost.errors import InvalidRequest, NotFound
from modelhost.store import conversations as store
from modelhost.store.conversations import StoredConversationItem
from store.databases import Database

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
ORG, PROJECT = "org-a", "proj_a"


def _message(item_id: str, text: str = "Hi") -> dict[str, object]:
    return {"id": item_id, "type": "message", "role": "user", "status": "completed", "content": [{"type": "input_text", "text": text}]}


def _new(database: Database, *, at: datetime = NOW, org: str = ORG, project: str = PROJECT) -> str:
    with database.sessions() as session:
        conversation = store.create_conversation(session, org, project, {"topic": "demo"}, now=at)
        session.commit()
        return conversation.id


def test_items_are_listed_in_the_order_added_with_their_ids(database: Database) -> None:
    conversation_id = _new(database)
    with database.sessions() as session:
        store.append_items(session, ORG, PROJECT, conversation_id, [_message("msg_b"), _message("msg_a")])
        session.commit()
    with database.sessions() as session:
        store.append_items(session, ORG, PROJECT, conversation_id, [_message("fc_z")])
        session.commit()
    with database.sessions() as session:
        items = store.conversation_items(session, ORG, PROJECT, conversation_id)
    assert [item["id"] for item in items] == ["msg_b", "msg_a", "fc_z"]
    assert items[0] == _message("msg_b")


def test_another_project_or_organization_finds_no_conversation(database: Database) -> None:
    conversation_id = _new(database)
    for org, project in (("org-a", "proj_b"), ("org-b", PROJECT), (ORG, PROJECT)):
        with database.sessions() as session:
            if (org, project) == (ORG, PROJECT):
                assert store.conversation_items(session, org, project, conversation_id) == []
                continue
            with pytest.raises(NotFound) as caught:
                store.conversation_items(session, org, project, conversation_id)
            assert caught.value.message == f"Conversation with id '{conversation_id}' not found."
            assert caught.value.param == "conversation"
            with pytest.raises(NotFound):
                store.append_items(session, org, project, conversation_id, [_message("msg_1")])
    with database.sessions() as session, pytest.raises(NotFound):
        store.conversation_items(session, ORG, PROJECT, "conv_unknown")


def test_an_id_already_in_the_conversation_is_refused(database: Database) -> None:
    conversation_id = _new(database)
    with database.sessions() as session:
        store.append_items(session, ORG, PROJECT, conversation_id, [_message("msg_1")])
        session.commit()
    for batch in ([_message("msg_1")], [_message("msg_2"), _message("msg_2")]):
        with database.sessions() as session, pytest.raises(InvalidRequest, match="Duplicate item found with id 'msg_"):
            store.append_items(session, ORG, PROJECT, conversation_id, batch)


def test_a_conversation_holds_at_most_the_cap(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "MAX_ITEMS_PER_CONVERSATION", 3)
    conversation_id = _new(database)
    with database.sessions() as session:
        store.append_items(session, ORG, PROJECT, conversation_id, [_message("msg_1"), _message("msg_2")])
        session.commit()
    with database.sessions() as session, pytest.raises(InvalidRequest, match="at most 3 items"):
        store.append_items(session, ORG, PROJECT, conversation_id, [_message("msg_3"), _message("msg_4")])
    with database.sessions() as session:  # deleting one makes room for one; positions never repeat
        conversation = store.find_conversation(session, ORG, PROJECT, conversation_id, for_update=True)
        assert conversation is not None
        assert store.delete_item(session, conversation, "msg_1")
        store.append_items(session, ORG, PROJECT, conversation_id, [_message("msg_3"), _message("msg_4")])
        session.commit()
    with database.sessions() as session:
        assert [i["id"] for i in store.conversation_items(session, ORG, PROJECT, conversation_id)] == ["msg_2", "msg_3", "msg_4"]
        positions = session.scalars(select(StoredConversationItem.position).order_by(StoredConversationItem.position))
        assert list(positions) == [1, 2, 3]


def test_pages_go_after_an_item_in_either_order(database: Database) -> None:
    conversation_id = _new(database)
    ids = [f"msg_{n}" for n in range(5)]
    with database.sessions() as session:
        store.append_items(session, ORG, PROJECT, conversation_id, [_message(i) for i in ids])
        session.commit()
    with database.sessions() as session:
        conversation = store.find_conversation(session, ORG, PROJECT, conversation_id)
        assert conversation is not None

        def page(after: str | None, descending: bool) -> tuple[list[object], bool]:
            got = store.item_page(session, conversation, limit=2, after=after, descending=descending)
            return [i["id"] for i in got.items], got.has_more

        assert page(None, False) == (["msg_0", "msg_1"], True)
        assert page("msg_1", False) == (["msg_2", "msg_3"], True)
        assert page("msg_3", False) == (["msg_4"], False)
        assert page(None, True) == (["msg_4", "msg_3"], True)
        assert page("msg_1", True) == (["msg_0"], False)


def test_purge_deletes_expired_conversations_with_their_items(database: Database) -> None:
    old = _new(database, at=NOW - timedelta(days=31))
    touched = _new(database, at=NOW - timedelta(days=31))
    fresh = _new(database, at=NOW - timedelta(days=1))
    for conversation_id in (old, touched, fresh):
        with database.sessions() as session:
            conversation = store.find_conversation(session, ORG, PROJECT, conversation_id, now=NOW - timedelta(days=31))
            assert conversation is not None
            added_at = NOW - timedelta(days=2) if conversation_id == touched else conversation.created_at
            store.add_items(session, conversation, [_message(f"msg_{conversation_id}")], now=added_at)
            session.commit()
    with database.sessions() as session:
        assert store.purge_expired(session, NOW) == 1  # `touched` was changed two days ago: it slid
        session.commit()
    with database.sessions() as session:
        assert store.find_conversation(session, ORG, PROJECT, old) is None
        assert [i["id"] for i in store.conversation_items(session, ORG, PROJECT, touched)] == [f"msg_{touched}"]
        assert session.scalar(select(func.count()).select_from(StoredConversationItem)) == 2
        assert store.purge_expired(session, NOW + timedelta(days=29)) == 2
        session.commit()
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StoredConversationItem)) == 0


def test_deleting_a_conversation_deletes_its_items(database: Database) -> None:
    conversation_id = _new(database)
    with database.sessions() as session:
        store.append_items(session, ORG, PROJECT, conversation_id, [_message("msg_1")])
        conversation = store.find_conversation(session, ORG, PROJECT, conversation_id, for_update=True)
        assert conversation is not None
        store.delete_conversation(session, conversation)
        session.commit()
    with database.sessions() as session:
        assert store.find_conversation(session, ORG, PROJECT, conversation_id) is None
        assert session.scalar(select(func.count()).select_from(StoredConversationItem)) == 0


def test_concurrent_appends_take_distinct_positions(database: Database) -> None:
    conversation_id = _new(database)

    def append(writer: str) -> None:
        for n in range(8):
            with database.sessions() as session:
                store.append_items(session, ORG, PROJECT, conversation_id, [_message(f"msg_{writer}{n}a"), _message(f"msg_{writer}{n}b")])
                session.commit()

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(append, "xyz"))
    with database.sessions() as session:
        ids = [str(item["id"]) for item in store.conversation_items(session, ORG, PROJECT, conversation_id)]
        conversation = store.find_conversation(session, ORG, PROJECT, conversation_id)
        assert conversation is not None and conversation.item_count == len(ids) == 48
    for writer in "xyz":  # each writer's items in its order, each pair together
        mine = [i for i in ids if i.startswith(f"msg_{writer}")]
        assert mine == [f"msg_{writer}{n}{half}" for n in range(8) for half in "ab"]
        assert all(ids[ids.index(f"msg_{writer}{n}a") + 1] == f"msg_{writer}{n}b" for n in range(8))


def test_an_expired_conversation_not_yet_swept_is_not_found(database: Database) -> None:
    conversation_id = _new(database, at=datetime.now(timezone.utc) - timedelta(days=31))
    with database.sessions() as session:
        assert store.find_conversation(session, ORG, PROJECT, conversation_id) is None
        with pytest.raises(NotFound):
            store.conversation_items(session, ORG, PROJECT, conversation_id)


def test_a_conversation_holds_a_bounded_number_of_characters_counted_as_items_come_and_go(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "MAX_CHARACTERS_PER_CONVERSATION", 1000)
    conversation_id = _new(database)
    big = _message("msg_big", "x" * 600)
    with database.sessions() as session:
        store.append_items(session, ORG, PROJECT, conversation_id, [big])
        session.commit()
    with database.sessions() as session:
        with pytest.raises(InvalidRequest) as caught:
            store.append_items(session, ORG, PROJECT, conversation_id, [_message("msg_more", "y" * 600)])
        assert "characters" in caught.value.message and caught.value.param == "conversation"
    with database.sessions() as session:
        conversation = store.found_conversation(session, ORG, PROJECT, conversation_id)
        assert conversation.total_characters == store.item_characters(big)
        assert store.delete_item(session, conversation, "msg_big")
        assert conversation.total_characters == 0
        store.append_items(session, ORG, PROJECT, conversation_id, [_message("msg_more", "y" * 600)])
        session.commit()
