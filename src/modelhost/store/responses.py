"""Stored responses: their tables (SQLAlchemy models on `schema.Base`) and queries (issue #14).

A response is one row (the Response object as JSON, with what queries need in columns) and its
input and output items in order, one row each. Every query takes the caller's organization and
project: another project's response is the same `NotFound` as one that never existed, and so is
one past its `expires_at` (the sweep, `purge_expired`, deletes it later). Functions take an open
`Session` and commit nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.errors import NotFound
from modelhost.store.schema import Base, LedgerReplica
from modelhost.store.tenancy import as_utc

INPUT, OUTPUT = "input", "output"


class StoredResponse(Base):
    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_owner", "organization_id", "project_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(256))
    previous_response_id: Mapped[str | None] = mapped_column(String(128))
    chain_length: Mapped[int] = mapped_column(Integer)  # responses in its chain, itself included
    replica_id: Mapped[str | None] = mapped_column(String(64))  # a background response: the replica running it
    body: Mapped[dict[str, Any]] = mapped_column(JSON)  # the Response object
    events: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # a finished background response's stream


class StoredResponseItem(Base):
    """An input or output item of a response, at its position."""

    __tablename__ = "response_items"
    __table_args__ = (
        UniqueConstraint("response_id", "role", "position", name="uq_response_items_position"),
        Index("ix_response_items_item", "project_id", "item_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    response_id: Mapped[str] = mapped_column(String(64), ForeignKey("responses.id", ondelete="CASCADE"))
    organization_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(8))  # input or output
    position: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[str] = mapped_column(String(128))
    item: Mapped[dict[str, Any]] = mapped_column(JSON)


def add_response(
    session: Session,
    organization_id: str,
    project_id: str,
    body: dict[str, Any],
    input_items: Sequence[dict[str, Any]],
    *,
    created_at: datetime,
    expires_at: datetime,
    chain_length: int,
    replica_id: str | None = None,
) -> None:
    """Store the Response object `body`, the items it was given and the items it answered with."""
    session.add(
        StoredResponse(
            id=body["id"],
            organization_id=organization_id,
            project_id=project_id,
            created_at=created_at,
            expires_at=expires_at,
            status=body["status"],
            model=body["model"],
            previous_response_id=body.get("previous_response_id"),
            chain_length=chain_length,
            replica_id=replica_id,
            body=body,
        )
    )
    session.flush()  # the items' foreign key needs the row on PostgreSQL
    _add_items(session, organization_id, project_id, body["id"], INPUT, input_items)
    _add_items(session, organization_id, project_id, body["id"], OUTPUT, body.get("output") or [])


def _add_items(
    session: Session, organization_id: str, project_id: str, response_id: str, role: str, items: Sequence[dict[str, Any]]
) -> None:
    for position, item in enumerate(items):
        session.add(
            StoredResponseItem(
                response_id=response_id,
                organization_id=organization_id,
                project_id=project_id,
                role=role,
                position=position,
                item_id=str(item.get("id", "")),
                item=item,
            )
        )


def update_response(
    session: Session,
    organization_id: str,
    project_id: str,
    body: dict[str, Any],
    *,
    from_statuses: Sequence[str],
    events: list[dict[str, Any]] | None = None,
) -> bool:
    """Replace a response's object (and output items, and its events when given) with `body`, if its
    status is still one of `from_statuses`: a response cancelled meanwhile stays cancelled. Whether it was replaced."""
    changed = session.execute(
        update(StoredResponse)
        .where(
            StoredResponse.id == body["id"],
            StoredResponse.organization_id == organization_id,
            StoredResponse.project_id == project_id,
            StoredResponse.status.in_(list(from_statuses)),
        )
        .values(status=body["status"], body=body, **({"events": events} if events is not None else {}))
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.execute(delete(StoredResponseItem).where(StoredResponseItem.response_id == body["id"], StoredResponseItem.role == OUTPUT))
    _add_items(session, organization_id, project_id, body["id"], OUTPUT, body.get("output") or [])
    return True


def response_events(
    session: Session, organization_id: str, project_id: str, response_id: str, now: datetime
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The response and its stored events (None until a background response has finished)."""
    row = _row(session, organization_id, project_id, response_id, now)
    if row is None:
        raise not_found(response_id)
    return dict(row.body), row.events


def status(session: Session, organization_id: str, project_id: str, response_id: str, now: datetime) -> str | None:
    """The response's status; None if the project has no such response (any longer)."""
    row = _row(session, organization_id, project_id, response_id, now)
    return None if row is None else row.status


def running_replica(session: Session, organization_id: str, project_id: str, response_id: str, now: datetime) -> str | None:
    """The replica running the project's background response `response_id`, if it is still queued or in progress."""
    row = _row(session, organization_id, project_id, response_id, now)
    return row.replica_id if row is not None and row.status in ("queued", "in_progress") else None


def replica_alive(session: Session, replica_id: str, since: datetime) -> bool:
    """Whether `replica_id` has beaten its ledger heartbeat since `since` (a replica that stopped has no row)."""
    beat = session.scalars(select(LedgerReplica.heartbeat_at).where(LedgerReplica.replica_id == replica_id)).first()
    return beat is not None and as_utc(beat) >= since  # type: ignore[operator]


def _row(session: Session, organization_id: str, project_id: str, response_id: str, now: datetime) -> StoredResponse | None:
    return session.scalars(
        select(StoredResponse).where(
            StoredResponse.id == response_id,
            StoredResponse.organization_id == organization_id,
            StoredResponse.project_id == project_id,
            StoredResponse.expires_at > now,
        )
    ).first()


def not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.")


def get_response(session: Session, organization_id: str, project_id: str, response_id: str, now: datetime) -> dict[str, Any]:
    row = _row(session, organization_id, project_id, response_id, now)
    if row is None:
        raise not_found(response_id)
    return dict(row.body)


def chain_length(session: Session, organization_id: str, project_id: str, response_id: str, now: datetime) -> int | None:
    """How many responses the chain ending at `response_id` holds; None if the project has no such response."""
    row = _row(session, organization_id, project_id, response_id, now)
    return None if row is None else row.chain_length


def delete_response(session: Session, organization_id: str, project_id: str, response_id: str, now: datetime) -> None:
    row = _row(session, organization_id, project_id, response_id, now)
    if row is None:
        raise not_found(response_id)
    session.execute(delete(StoredResponseItem).where(StoredResponseItem.response_id == response_id))
    session.delete(row)


def items(session: Session, response_ids: Sequence[str], role: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(response id, role, item) of the given responses (already checked to be the caller's), each in order."""
    query = select(StoredResponseItem).where(StoredResponseItem.response_id.in_(response_ids))
    if role is not None:
        query = query.where(StoredResponseItem.role == role)
    rows = session.scalars(query.order_by(StoredResponseItem.response_id, StoredResponseItem.role, StoredResponseItem.position))
    return [(r.response_id, r.role, r.item) for r in rows]


def chain(session: Session, organization_id: str, project_id: str, response_id: str, now: datetime) -> list[str]:
    """The ids of the chain's responses ending at `response_id`, oldest first; a deleted or expired link ends it.

    Only ids are read (not the stored Response objects), so a chain costs its length in small rows
    whatever its responses hold; the caller bounds that length first (`chain_length`)."""
    found: list[str] = []
    next_id: str | None = response_id
    while next_id is not None:
        link = session.execute(
            select(StoredResponse.id, StoredResponse.previous_response_id).where(
                StoredResponse.id == next_id,
                StoredResponse.organization_id == organization_id,
                StoredResponse.project_id == project_id,
                StoredResponse.expires_at > now,
            )
        ).first()
        if link is None:
            break
        found.append(link[0])
        next_id = link[1]
    return found[::-1]


def find_items(session: Session, organization_id: str, project_id: str, item_ids: Sequence[str], now: datetime) -> dict[str, dict[str, Any]]:
    """{item id: item} for the ids the project's live responses hold (the newest copy of each)."""
    rows = session.execute(
        select(StoredResponseItem.item_id, StoredResponseItem.item)
        .join(StoredResponse, StoredResponse.id == StoredResponseItem.response_id)
        .where(
            StoredResponseItem.organization_id == organization_id,
            StoredResponseItem.project_id == project_id,
            StoredResponseItem.item_id.in_(list(item_ids)),
            StoredResponse.expires_at > now,
        )
        .order_by(StoredResponseItem.id)
    )
    return {item_id: item for item_id, item in rows}


def purge_expired(session: Session, now: datetime) -> int:
    """Delete the responses whose `expires_at` <= `now`, with their items; how many responses went."""
    expired = select(StoredResponse.id).where(StoredResponse.expires_at <= now)
    session.execute(delete(StoredResponseItem).where(StoredResponseItem.response_id.in_(expired)))
    result = session.execute(delete(StoredResponse).where(StoredResponse.expires_at <= now))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
