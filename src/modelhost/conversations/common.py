"""What the conversation and item operations share: finding the caller's conversation, its wire
object, and new items in their stored shape."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from modelhost.auth import Principal
from modelhost.organization.common import unix_now
from modelhost.protocol.conversations import Conversation
from modelhost.protocol.responses import InputItem
from modelhost.responses.items import input_items
from modelhost.store import conversations as store
from modelhost.store import responses as stored_responses
from modelhost.store.conversations import StoredConversation


def conversation_object(conversation: StoredConversation) -> Conversation:
    return Conversation(
        id=conversation.id, created_at=unix_now(conversation.created_at), metadata=dict(conversation.metadata_)
    )


def found(session: Session, who: Principal, conversation_id: str, *, for_update: bool = False) -> StoredConversation:
    """The caller's project's conversation; the same 404 for an unknown id and for another project's."""
    conversation = store.find_conversation(
        session, who.organization_id, who.project_id, conversation_id, for_update=for_update
    )
    if conversation is None:
        raise store.conversation_not_found(conversation_id)
    return conversation


def stored_items(session: Session, who: Principal, items: Sequence[InputItem], *, now: datetime) -> list[dict[str, Any]]:
    """`items` of a request body as they are stored and listed, in order, as the Responses API takes its
    `input`: ids given to those sent without one (msg_…, fc_…, fco_…); an item reference copied from
    the project's stored responses (404 naming `items[i]` if it has none by that id); a 400 naming
    `items[i]…` for an image, audio or file part, or an item type this text-only server cannot take."""

    def earlier(ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return stored_responses.find_items(session, who.organization_id, who.project_id, ids, now)

    return input_items(items, earlier, param="items")
