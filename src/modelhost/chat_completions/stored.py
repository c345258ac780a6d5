"""Stored chat completions as plain functions, shared by `api/chat.py` (saving) and `api/stored_chat.py`.

Each takes the session factory and the caller's `Principal`; a completion of another project or
organization is the same 404 as an unknown id. A stored completion lives until
`Settings.stored_objects_retention_days` after it was made; the sweep in `store/retention.py`
deletes it then.

    save(sessions, who, request, completion, retention_days=30)   # after generation, before the answer
    get(sessions, who, "chatcmpl-…")                                # → StoredChatCompletion
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Principal
from modelhost.errors import ServiceUnavailable
from modelhost.organization.common import not_found, transaction
from modelhost.protocol import convert
from modelhost.protocol.chat import AssistantMessage, ChatCompletionRequest, Message, TextPart, ToolMessage
from modelhost.protocol.stored_chat import (
    ChatCompletionDeleted,
    ChatCompletionList,
    ChatCompletionListQuery,
    ChatCompletionMessageList,
    ChatCompletionUpdateRequest,
    MessageListQuery,
    StoredChatCompletion,
    StoredMessage,
)
from modelhost.store import chat_completions as store

NOT_STORED = (
    "The completion was generated and billed, but could not be stored, so it is not returned; "
    "a retry generates (and bills) it again."
)


def save(
    sessions: sessionmaker[Session],
    who: Principal,
    request: ChatCompletionRequest,
    completion: dict[str, Any],
    *,
    retention_days: int,
    now: datetime | None = None,
) -> None:
    """Keep `completion` (the chat.completion object answered) with `request`'s messages and metadata.

    A store that fails is a 503 (a stream's error event): the client is not told of an object it could
    not read back. It says `x-should-retry: false`, which the OpenAI SDKs honour: the answer was
    generated and billed, and a retry would generate (and bill) it again.
    """
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)  # SQLite keeps no zone: UTC throughout
    row = store.StoredChatCompletion(
        id=str(completion["id"]),
        organization_id=who.organization_id,
        project_id=who.project_id,
        model=str(completion["model"]),
        completion=completion,
        created_at=now,
        expires_at=now + timedelta(days=retention_days),
    )
    messages = [stored_message(m, f"messages[{i}].content") for i, m in enumerate(request.messages)]
    try:
        with transaction(sessions) as session:
            store.add(session, row, messages, request.metadata or {})
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(NOT_STORED, headers={"x-should-retry": "false"}) from exc


def stored_message(message: Message, param: str) -> dict[str, Any]:
    """A request message as `GET …/messages` shows it (without its id): text `content`, text `content_parts`."""
    parts = message.content if isinstance(message.content, list) else None
    shown: dict[str, Any] = {
        "role": message.role,
        "content": None if message.content is None else convert.content_text(message.content, param),
        "name": getattr(message, "name", None),
        # The spec's parts are text and image_url; a model that reads text takes nothing else (a refusal part is content).
        "content_parts": [p.model_dump() for p in parts if isinstance(p, TextPart)] if parts is not None else None,
        "refusal": message.refusal if isinstance(message, AssistantMessage) else None,  # the spec requires it
    }
    if isinstance(message, AssistantMessage):
        if message.tool_calls:
            shown["tool_calls"] = [c.model_dump() for c in message.tool_calls]
        if message.function_call is not None:
            shown["function_call"] = message.function_call.model_dump()
    elif isinstance(message, ToolMessage):
        shown["tool_call_id"] = message.tool_call_id
    return shown


def list_completions(
    sessions: sessionmaker[Session], who: Principal, query: ChatCompletionListQuery, metadata: Mapping[str, str]
) -> ChatCompletionList:
    with transaction(sessions) as session:
        page = store.list_page(
            session,
            who.organization_id,
            who.project_id,
            model=query.model,
            metadata=metadata,
            limit=query.limit,
            after=query.after,
            descending=query.order == "desc",
        )
        found = store.metadata_of(session, [row.id for row in page.items])
        data = [_wire(row, found[row.id]) for row in page.items]
    return ChatCompletionList(
        object="list",
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


def get(sessions: sessionmaker[Session], who: Principal, completion_id: str) -> StoredChatCompletion:
    with transaction(sessions) as session:
        row = _find(session, who, completion_id)
        return _wire(row, store.metadata_of(session, [row.id])[row.id])


def update(
    sessions: sessionmaker[Session], who: Principal, completion_id: str, body: ChatCompletionUpdateRequest
) -> StoredChatCompletion:
    """Replace the completion's metadata (null clears it); nothing else of a stored completion changes."""
    with transaction(sessions) as session:
        row = _find(session, who, completion_id)
        store.replace_metadata(session, row, body.metadata or {})
        return _wire(row, dict(body.metadata or {}))


def delete(sessions: sessionmaker[Session], who: Principal, completion_id: str) -> ChatCompletionDeleted:
    with transaction(sessions) as session:
        store.remove(session, _find(session, who, completion_id))
    return ChatCompletionDeleted(object="chat.completion.deleted", id=completion_id, deleted=True)


def messages(
    sessions: sessionmaker[Session], who: Principal, completion_id: str, query: MessageListQuery
) -> ChatCompletionMessageList:
    with transaction(sessions) as session:
        row = _find(session, who, completion_id)
        page = store.messages_page(session, row.id, limit=query.limit, after=query.after, descending=query.order == "desc")
        data = [StoredMessage.model_validate({"id": m.message_id, **m.message}) for m in page.items]
    return ChatCompletionMessageList(
        object="list",
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


def _find(session: Session, who: Principal, completion_id: str) -> store.StoredChatCompletion:
    row = store.get(session, who.organization_id, who.project_id, completion_id)
    if row is None:
        raise not_found("chat completion", completion_id)
    return row


def _wire(row: store.StoredChatCompletion, metadata: dict[str, str]) -> StoredChatCompletion:
    """The object as answered, with its metadata; fields it was answered without stay unset (and unsent)."""
    return StoredChatCompletion.model_validate({**row.completion, "metadata": metadata})
