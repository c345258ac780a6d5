"""A conversation itself: create it (with its first items), read it, replace its metadata, delete it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Principal
from modelhost.conversations.common import conversation_object, found, stored_items
from modelhost.organization.common import transaction
from modelhost.protocol.conversations import Conversation, CreateConversation, DeletedConversation, UpdateConversation
from modelhost.store import conversations as store


def create(
    sessions: sessionmaker[Session],
    who: Principal,
    body: CreateConversation,
    *,
    retention: timedelta,
    now: datetime | None = None,
) -> Conversation:
    """A new conversation of the caller's project holding `body.items` (ids given to those sent without)."""
    now = now or datetime.now(timezone.utc)
    with transaction(sessions) as session:
        items = stored_items(session, who, body.items or [], now=now)  # all checked before anything is written
        conversation = store.create_conversation(
            session, who.organization_id, who.project_id, body.metadata or {}, now=now, retention=retention
        )
        if items:
            store.add_items(session, conversation, items, now=now)
        return conversation_object(conversation)


def retrieve(sessions: sessionmaker[Session], who: Principal, conversation_id: str) -> Conversation:
    with sessions() as session:
        return conversation_object(found(session, who, conversation_id))


def update(
    sessions: sessionmaker[Session], who: Principal, conversation_id: str, body: UpdateConversation
) -> Conversation:
    """The conversation with `body.metadata` in place of its metadata."""
    with transaction(sessions) as session:
        conversation = found(session, who, conversation_id, for_update=True)
        store.update_metadata(session, conversation, body.metadata or {}, now=datetime.now(timezone.utc))
        return conversation_object(conversation)


def delete(sessions: sessionmaker[Session], who: Principal, conversation_id: str) -> DeletedConversation:
    """Delete the conversation and its items: afterwards both are a 404."""
    with transaction(sessions) as session:
        conversation = found(session, who, conversation_id, for_update=True)
        store.delete_conversation(session, conversation)
    return DeletedConversation(id=conversation.id)
