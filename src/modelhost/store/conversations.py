"""Conversations and their items: tables and queries (issue #14).

A conversation belongs to one organization and project; every lookup filters on both, so another
project's conversation is exactly as missing as an unknown id. Its items are stored as the JSON
the API lists (each with its `id`), numbered by `position` in the order they were added; deleting
one leaves a gap, never renumbers.

Writers hold the conversation row while they add items: the `UPDATE … WHERE item_count + n <= cap`
that reserves their positions locks it on PostgreSQL (SQLite has one writer at a time), so two
requests appending to one conversation at once get consecutive positions, never the same ones,
and together never pass `MAX_ITEMS_PER_CONVERSATION` items or `MAX_CHARACTERS_PER_CONVERSATION`
characters (`total_characters`, reserved in the same UPDATE).

Retention slides: a conversation expires `retention` after its last change (items added, metadata
updated), the interval it was created with (`expires_at - updated_at`). `purge_expired` deletes
what has expired, items first. Nothing here commits: the caller's transaction does.

    >>> append_items(session, "org-1", "proj_1", "conv_1", [{"id": "msg_1", "type": "message", ...}])
    >>> [item["id"] for item in conversation_items(session, "org-1", "proj_1", "conv_1")]
    ['msg_1']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.errors import InvalidRequest, NotFound
from modelhost.ids import new_id
from modelhost.store.pages import Page, keyset_page
from modelhost.store.schema import Base
from modelhost.store.tenancy import as_utc

#: The most items one conversation holds; adding past it is a 400 (a conversation is context for a
#: model, and every response that uses it reads all of it: tens of thousands of items fit no model).
MAX_ITEMS_PER_CONVERSATION = 10_000
#: The most characters of item JSON one conversation holds (8 MiB of text): a response that uses the
#: conversation reads all of it, so its size is bounded where it is stored, not only its item count.
MAX_CHARACTERS_PER_CONVERSATION = 8 * 1024 * 1024
#: How long an untouched conversation is kept when the caller names no retention (issue #14: 30 days).
DEFAULT_RETENTION = timedelta(days=30)
CONVERSATION_ID = "conv_"
MAX_ITEM_ID_LENGTH = 128


class StoredConversation(Base):
    """A conversation: its owner, metadata, and the counters that place and bound its items."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    item_count: Mapped[int] = mapped_column(Integer)  # items it holds now
    next_position: Mapped[int] = mapped_column(Integer)  # the position the next item takes
    total_characters: Mapped[int] = mapped_column(Integer)  # the characters of its items' JSON (`item_characters`)


class StoredConversationItem(Base):
    """One item of a conversation, as the API lists it (`item` holds its `id`, type, content…)."""

    __tablename__ = "conversation_items"
    # The primary key lists a conversation's items in order; the unique key finds one by id.
    __table_args__ = (UniqueConstraint("conversation_id", "item_id", name="uq_conversation_items_item_id"),)

    conversation_id: Mapped[str] = mapped_column(String(64), ForeignKey("conversations.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[str] = mapped_column(String(MAX_ITEM_ID_LENGTH))
    item: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def conversation_not_found(conversation_id: str, param: str | None = None) -> NotFound:
    """OpenAI's answer for an unknown conversation, and for one of another project or organization."""
    return NotFound(f"Conversation with id '{conversation_id[:128]}' not found.", param=param)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def item_characters(item: Mapping[str, object]) -> int:
    """The size an item counts for in a conversation's bound: the characters of its JSON."""
    return len(json.dumps(item))


def create_conversation(
    session: Session,
    organization_id: str,
    project_id: str,
    metadata: dict[str, str],
    *,
    now: datetime,
    retention: timedelta = DEFAULT_RETENTION,
) -> StoredConversation:
    """A new, empty conversation of the project (flushed, not committed)."""
    conversation = StoredConversation(
        id=new_id(CONVERSATION_ID, 48),
        organization_id=organization_id,
        project_id=project_id,
        created_at=now,
        updated_at=now,
        expires_at=now + retention,
        metadata_=dict(metadata),
        item_count=0,
        next_position=0,
        total_characters=0,
    )
    session.add(conversation)
    session.flush()
    return conversation


def find_conversation(
    session: Session,
    organization_id: str,
    project_id: str,
    conversation_id: str,
    *,
    for_update: bool = False,
    now: datetime | None = None,
) -> StoredConversation | None:
    """The project's live conversation `conversation_id`, or None (also when another project owns it,
    or it has expired and waits for the sweep).

    `for_update` locks its row until commit (PostgreSQL), so no item is added while it is deleted.
    `now` (the clock's time when None) is when it must still be live.
    """
    query = select(StoredConversation).where(
        StoredConversation.id == conversation_id,
        StoredConversation.organization_id == organization_id,
        StoredConversation.project_id == project_id,
        StoredConversation.expires_at > (now or _now()),
    )
    return session.scalars(query.with_for_update() if for_update else query).one_or_none()


def found_conversation(session: Session, organization_id: str, project_id: str, conversation_id: str) -> StoredConversation:
    """The project's live conversation; NotFound (param `conversation`) if it has none by that id."""
    conversation = find_conversation(session, organization_id, project_id, conversation_id)
    if conversation is None:
        raise conversation_not_found(conversation_id, param="conversation")
    return conversation


def conversation_items(
    session: Session, organization_id: str, project_id: str, conversation_id: str
) -> list[dict[str, object]]:
    """Every item of the project's conversation, in the order added; NotFound (param `conversation`) if none.

    It reads the whole conversation: a caller that must bound what it reads checks the conversation's
    `item_count` and `total_characters` (`found_conversation`) first."""
    conversation = found_conversation(session, organization_id, project_id, conversation_id)
    return list(
        session.scalars(
            select(StoredConversationItem.item)
            .where(StoredConversationItem.conversation_id == conversation.id)
            .order_by(StoredConversationItem.position)
        )
    )


def append_items(
    session: Session,
    organization_id: str,
    project_id: str,
    conversation_id: str,
    items: list[dict[str, object]],
) -> None:
    """Add `items` (each as listed, with its `id`) at the end of the project's conversation.

    NotFound (param `conversation`) for a conversation the project does not have; 400 for an id
    the conversation already holds, or for more items than it may hold.
    """
    conversation = found_conversation(session, organization_id, project_id, conversation_id)
    add_items(session, conversation, items, now=_now(), param="conversation")


def add_items(
    session: Session,
    conversation: StoredConversation,
    items: Sequence[dict[str, object]],
    *,
    now: datetime,
    param: str | None = "items",
) -> None:
    """Add `items` (each with its `id`) after the conversation's last item, and push back its expiry."""
    ids = [str(item["id"]) for item in items]
    assert all(0 < len(i) <= MAX_ITEM_ID_LENGTH for i in ids), "item ids are given and bounded by the caller"
    _check_new_ids(session, conversation.id, ids, param)
    characters = sum(item_characters(item) for item in items)
    first = _reserve_positions(session, conversation, len(items), characters, now=now, param=param)
    session.add_all(
        StoredConversationItem(
            conversation_id=conversation.id, position=first + offset, item_id=item_id, item=item, created_at=now
        )
        for offset, (item_id, item) in enumerate(zip(ids, items))
    )
    session.flush()


def _check_new_ids(session: Session, conversation_id: str, ids: list[str], param: str | None) -> None:
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise _duplicate(item_id, param)
        seen.add(item_id)
    taken = session.scalars(
        select(StoredConversationItem.item_id).where(
            StoredConversationItem.conversation_id == conversation_id, StoredConversationItem.item_id.in_(ids)
        )
    ).first()
    if taken is not None:
        raise _duplicate(taken, param)


def _duplicate(item_id: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(
        f"Duplicate item found with id '{item_id[:MAX_ITEM_ID_LENGTH]}'. Remove duplicate items from your input and try again.",
        param=param,
        code="invalid_value",
    )


def _reserve_positions(
    session: Session, conversation: StoredConversation, count: int, characters: int, *, now: datetime, param: str | None
) -> int:
    """The first of `count` positions taken for new items of `characters` in all (the row stays locked until commit)."""
    table = StoredConversation
    retention = as_utc(conversation.expires_at) - as_utc(conversation.updated_at)  # type: ignore[operator]
    reserved = session.execute(
        update(table)
        .where(
            table.id == conversation.id,
            table.item_count + count <= MAX_ITEMS_PER_CONVERSATION,
            table.total_characters + characters <= MAX_CHARACTERS_PER_CONVERSATION,
        )
        .values(
            item_count=table.item_count + count,
            next_position=table.next_position + count,
            total_characters=table.total_characters + characters,
            updated_at=now,
            expires_at=now + retention,
        )
        .execution_options(synchronize_session=False)
    )
    if reserved.rowcount != 1:  # type: ignore[attr-defined]
        if session.get(StoredConversation, conversation.id, populate_existing=True) is None:
            raise conversation_not_found(conversation.id, param=param)  # deleted or purged meanwhile
        raise InvalidRequest(
            f"Conversation '{conversation.id}' may hold at most {MAX_ITEMS_PER_CONVERSATION} items and "
            f"{MAX_CHARACTERS_PER_CONVERSATION} characters of items; adding {count} items of {characters} "
            "characters would go past it. Start a new conversation.",
            param=param,
            code="invalid_value",
        )
    session.refresh(conversation)  # the counters as this transaction left them
    return conversation.next_position - count


def update_metadata(
    session: Session, conversation: StoredConversation, metadata: dict[str, str], *, now: datetime
) -> None:
    """Replace the conversation's metadata, and push back its expiry."""
    retention = as_utc(conversation.expires_at) - as_utc(conversation.updated_at)  # type: ignore[operator]
    conversation.metadata_ = dict(metadata)
    conversation.updated_at = now
    conversation.expires_at = now + retention
    session.flush()


def item_page(
    session: Session,
    conversation: StoredConversation,
    *,
    limit: int,
    after: str | None,
    descending: bool,
) -> Page[dict[str, object]]:
    """Up to `limit` items after the item `after`, in the order added (or the reverse); UnknownCursor if `after` is not one."""
    page = keyset_page(
        session,
        select(StoredConversationItem).where(StoredConversationItem.conversation_id == conversation.id),
        created=StoredConversationItem.position,
        ident=StoredConversationItem.item_id,
        limit=limit,
        after=after,
        descending=descending,
    )
    return Page([row.item for row in page.items], page.has_more)


def _item_row(session: Session, conversation: StoredConversation, item_id: str) -> StoredConversationItem | None:
    return session.scalars(
        select(StoredConversationItem).where(
            StoredConversationItem.conversation_id == conversation.id, StoredConversationItem.item_id == item_id
        )
    ).one_or_none()


def find_item(session: Session, conversation: StoredConversation, item_id: str) -> dict[str, object] | None:
    """The conversation's item `item_id`, as listed, or None."""
    row = _item_row(session, conversation, item_id)
    return None if row is None else row.item


def delete_item(session: Session, conversation: StoredConversation, item_id: str) -> bool:
    """Remove the conversation's item `item_id`; False when it has none by that id."""
    row = _item_row(session, conversation, item_id)
    if row is None:
        return False
    session.delete(row)
    session.execute(
        update(StoredConversation)
        .where(StoredConversation.id == conversation.id)
        .values(
            item_count=StoredConversation.item_count - 1,
            total_characters=StoredConversation.total_characters - item_characters(row.item),
        )
        .execution_options(synchronize_session=False)
    )
    session.flush()
    session.refresh(conversation)
    return True


def delete_conversation(session: Session, conversation: StoredConversation) -> None:
    """Remove the conversation and its items (found `for_update`, so none is being added)."""
    session.execute(delete(StoredConversationItem).where(StoredConversationItem.conversation_id == conversation.id))
    session.delete(conversation)
    session.flush()


def purge_expired(session: Session, now: datetime) -> int:
    """Delete the conversations (with their items) that expired at or before `now`; how many went."""
    expired = select(StoredConversation.id).where(StoredConversation.expires_at <= as_utc(now))
    # Lock them first (PostgreSQL): one whose items are being added waits, and is kept if that pushed
    # its expiry back. SQLite writes one transaction at a time, from the first DELETE on.
    session.execute(expired.with_for_update()).all()
    session.execute(
        delete(StoredConversationItem)
        .where(StoredConversationItem.conversation_id.in_(expired))
        .execution_options(synchronize_session=False)
    )
    gone = session.execute(
        delete(StoredConversation)
        .where(StoredConversation.expires_at <= as_utc(now))
        .execution_options(synchronize_session=False)
    )
    return int(gone.rowcount)  # type: ignore[attr-defined]
