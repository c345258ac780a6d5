"""A conversation's items: add up to 20 at a time, list them a page at a time, read or delete one.

Items are listed as stored, except that an assistant's `output_text` parts carry their logprobs
only when `include` asks for `message.output_text.logprobs` (an empty list otherwise, as the spec's
OutputTextContent requires the field). Other `include` values are accepted and change nothing:
no item this server stores has the data they ask for.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Principal
from modelhost.conversations.common import conversation_object, found, stored_items
from modelhost.errors import NotFound
from modelhost.organization.common import transaction
from modelhost.protocol.conversations import Conversation, CreateConversationItems, ItemListQuery
from modelhost.protocol.responses import ItemList
from modelhost.store import conversations as store

LOGPROBS = "message.output_text.logprobs"


def item_not_found(item_id: str) -> NotFound:
    return NotFound(f"Item with id '{item_id[:128]}' not found.")


def listed_item(item: Mapping[str, Any], include: Sequence[str] = ()) -> dict[str, Any]:
    """A stored item as the API lists it (see the module's docstring for `include`).

    >>> listed_item({"type": "message", "content": [{"type": "output_text", "text": "Hi", "logprobs": [1]}]})
    {'type': 'message', 'content': [{'type': 'output_text', 'text': 'Hi', 'logprobs': [], 'annotations': []}]}
    """
    listed = copy.deepcopy(dict(item))
    if listed.get("type") == "message" and isinstance(listed.get("content"), list):
        for part in listed["content"]:
            if isinstance(part, dict) and part.get("type") == "output_text":
                logprobs = part.get("logprobs")
                part["logprobs"] = logprobs if LOGPROBS in include and isinstance(logprobs, list) else []
                part.setdefault("annotations", [])
    return listed


def _page(items: Sequence[Mapping[str, Any]], has_more: bool, include: Sequence[str]) -> ItemList:
    data = [listed_item(item, include) for item in items]
    return ItemList(
        data=data,
        first_id=str(data[0]["id"]) if data else None,
        last_id=str(data[-1]["id"]) if data else None,
        has_more=has_more,
    )


def add_items(
    sessions: sessionmaker[Session],
    who: Principal,
    conversation_id: str,
    body: CreateConversationItems,
    *,
    include: Sequence[str] = (),
) -> ItemList:
    """Add `body.items` after the conversation's last item; the list of the items added."""
    now = datetime.now(timezone.utc)
    with transaction(sessions) as session:
        conversation = found(session, who, conversation_id)
        items = stored_items(session, who, body.items, now=now)
        store.add_items(session, conversation, items, now=now)
    return _page(items, False, include)


def list_items(sessions: sessionmaker[Session], who: Principal, conversation_id: str, query: ItemListQuery) -> ItemList:
    """One page of the conversation's items (400 for an `after` that is not one of them)."""
    with transaction(sessions) as session:  # it turns an unknown `after` into a 400 naming it
        conversation = found(session, who, conversation_id)
        page = store.item_page(
            session, conversation, limit=query.limit, after=query.after, descending=query.order == "desc"
        )
    return _page(page.items, page.has_more, query.include)


def retrieve_item(
    sessions: sessionmaker[Session], who: Principal, conversation_id: str, item_id: str, *, include: Sequence[str] = ()
) -> dict[str, Any]:
    with sessions() as session:
        item = store.find_item(session, found(session, who, conversation_id), item_id)
    if item is None:
        raise item_not_found(item_id)
    return listed_item(item, include)


def delete_item(sessions: sessionmaker[Session], who: Principal, conversation_id: str, item_id: str) -> Conversation:
    """Remove one item; the conversation it was in (as the spec answers)."""
    with transaction(sessions) as session:
        conversation = found(session, who, conversation_id, for_update=True)
        if not store.delete_item(session, conversation, item_id):
            raise item_not_found(item_id)
        return conversation_object(conversation)
