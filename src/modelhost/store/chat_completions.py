"""Stored chat completions (`store: true`): tables and queries.

A completion row holds the answer the client got (`completion`, JSON) and who it belongs to; its
request messages and metadata pairs are child rows (ON DELETE CASCADE), the metadata as rows so
that `metadata[key]=value` filters are plain indexed joins on SQLite and PostgreSQL alike. Every
query takes the owner (organization, project): another project's id is simply not found.
`purge_expired` is the retention sweep's part (store/retention.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, delete, exists, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.store.pages import Page, keyset_page
from modelhost.store.schema import Base
from modelhost.store.tenancy import as_utc


class StoredChatCompletion(Base):
    __tablename__ = "stored_chat_completions"
    __table_args__ = (Index("ix_stored_chat_completions_owner", "organization_id", "project_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"))
    model: Mapped[str] = mapped_column(String(256))
    completion: Mapped[dict[str, Any]] = mapped_column(JSON)  # the chat.completion object, without metadata
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class StoredChatMessage(Base):
    """One request message of a stored completion, as `GET …/messages` shows it (less its id)."""

    __tablename__ = "stored_chat_messages"

    completion_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("stored_chat_completions.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(80))  # "<completion id>-<position>", as OpenAI names them
    message: Mapped[dict[str, Any]] = mapped_column(JSON)


class StoredChatMetadata(Base):
    __tablename__ = "stored_chat_metadata"
    __table_args__ = (Index("ix_stored_chat_metadata_pair", "key", "value"),)

    completion_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("stored_chat_completions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


def add(
    session: Session,
    row: StoredChatCompletion,
    messages: Sequence[dict[str, Any]],
    metadata: Mapping[str, str],
) -> None:
    """Store a completion with its request messages (in order) and metadata."""
    session.add(row)
    session.flush()  # the parent first: the children's foreign keys name it
    session.add_all(
        StoredChatMessage(completion_id=row.id, position=i, message_id=f"{row.id}-{i}", message=m)
        for i, m in enumerate(messages)
    )
    session.add_all(StoredChatMetadata(completion_id=row.id, key=k, value=v) for k, v in metadata.items())


def _live() -> Any:
    """Only completions not yet expired: one past its time is gone before the sweep deletes it."""
    return StoredChatCompletion.expires_at > datetime.now(timezone.utc)


def get(session: Session, organization_id: str, project_id: str, completion_id: str) -> StoredChatCompletion | None:
    return session.scalars(
        select(StoredChatCompletion).where(
            StoredChatCompletion.id == completion_id,
            StoredChatCompletion.organization_id == organization_id,
            StoredChatCompletion.project_id == project_id,
            _live(),
        )
    ).first()


def metadata_of(session: Session, completion_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each completion's metadata (an empty dict for none), in one query."""
    found: dict[str, dict[str, str]] = {i: {} for i in completion_ids}
    rows = session.execute(
        select(StoredChatMetadata.completion_id, StoredChatMetadata.key, StoredChatMetadata.value)
        .where(StoredChatMetadata.completion_id.in_(completion_ids))
        .order_by(StoredChatMetadata.completion_id, StoredChatMetadata.key)
    )
    for completion_id, key, value in rows:
        found[completion_id][key] = value
    return found


def list_page(
    session: Session,
    organization_id: str,
    project_id: str,
    *,
    model: str | None,
    metadata: Mapping[str, str],
    limit: int,
    after: str | None,
    descending: bool,
) -> Page[StoredChatCompletion]:
    """The owner's completions by creation time, narrowed to `model` and to every `metadata` pair."""
    query = select(StoredChatCompletion).where(
        StoredChatCompletion.organization_id == organization_id, StoredChatCompletion.project_id == project_id, _live()
    )
    if model is not None:
        query = query.where(StoredChatCompletion.model == model)
    for key, value in metadata.items():
        query = query.where(
            exists().where(
                StoredChatMetadata.completion_id == StoredChatCompletion.id,
                StoredChatMetadata.key == key,
                StoredChatMetadata.value == value,
            )
        )
    return keyset_page(
        session,
        query,
        created=StoredChatCompletion.created_at,
        ident=StoredChatCompletion.id,
        limit=limit,
        after=after,
        descending=descending,
    )


def replace_metadata(session: Session, row: StoredChatCompletion, metadata: Mapping[str, str]) -> None:
    session.execute(delete(StoredChatMetadata).where(StoredChatMetadata.completion_id == row.id))
    session.add_all(StoredChatMetadata(completion_id=row.id, key=k, value=v) for k, v in metadata.items())


def remove(session: Session, row: StoredChatCompletion) -> None:
    """Delete the completion; its messages and metadata go with it (ON DELETE CASCADE)."""
    session.execute(
        delete(StoredChatCompletion).where(StoredChatCompletion.id == row.id).execution_options(synchronize_session=False)
    )


def messages_page(
    session: Session, completion_id: str, *, limit: int, after: str | None, descending: bool
) -> Page[StoredChatMessage]:
    query = select(StoredChatMessage).where(StoredChatMessage.completion_id == completion_id)
    return keyset_page(
        session,
        query,
        created=StoredChatMessage.position,
        ident=StoredChatMessage.message_id,
        limit=limit,
        after=after,
        descending=descending,
    )


def purge_expired(session: Session, now: datetime) -> int:
    """Delete the completions whose `expires_at` is at or before `now`, with their messages and metadata."""
    # In UTC: SQLite keeps a time without its zone, so every stored time is written and compared in UTC.
    result = session.execute(
        delete(StoredChatCompletion)
        .where(StoredChatCompletion.expires_at <= as_utc(now))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]  # a DML result has a row count
