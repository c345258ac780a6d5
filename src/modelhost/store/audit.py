"""The audit log: administrative events of an organization, written in the transaction that made them.

Functions take an open `Session` and commit nothing; the change and its event commit together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhost.ids import new_id
from modelhost.store.pages import Page, keyset_page
from modelhost.store.schema import AuditLogEntry
from modelhost.store.tenancy import utcnow


@dataclass(frozen=True)
class AuditActor:
    """Who acted: a user or service account (`actor_id`), through a key (`key_id`) or not."""

    actor_id: str | None
    key_id: str | None
    email: str | None
    wire: dict[str, object]  # the `actor` object as OpenAI's audit log shows it


@dataclass(frozen=True)
class AuditFilter:
    """What `list_events` narrows to; empty sequences mean "any"."""

    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    project_ids: Sequence[str] = field(default_factory=tuple)
    event_types: Sequence[str] = field(default_factory=tuple)
    actor_ids: Sequence[str] = field(default_factory=tuple)
    actor_emails: Sequence[str] = field(default_factory=tuple)
    resource_ids: Sequence[str] = field(default_factory=tuple)


def add_event(
    session: Session,
    organization_id: str,
    event_type: str,
    *,
    actor: AuditActor | None,
    resource_id: str | None,
    details: dict[str, object],
    project: tuple[str, str] | None = None,
) -> AuditLogEntry:
    """Record `event_type` (e.g. ``project.created``); `project` is (id, name) for project-scoped events."""
    entry = AuditLogEntry(
        id=new_id("audit_log-"),
        organization_id=organization_id,
        type=event_type,
        effective_at=utcnow(),
        project_id=project[0] if project else None,
        project_name=project[1] if project else None,
        actor=actor.wire if actor else None,
        actor_id=actor.actor_id if actor else None,
        actor_key_id=actor.key_id if actor else None,
        actor_email=actor.email if actor else None,
        resource_id=resource_id,
        details=details,
    )
    session.add(entry)
    session.flush()
    return entry


def list_events(
    session: Session,
    organization_id: str,
    filters: AuditFilter,
    *,
    limit: int,
    after: str | None = None,
    before: str | None = None,
) -> Page[AuditLogEntry]:
    """The organization's events, newest first, narrowed by `filters` (all bound parameters)."""
    query = select(AuditLogEntry).where(AuditLogEntry.organization_id == organization_id)
    if filters.since is not None:
        query = query.where(AuditLogEntry.effective_at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditLogEntry.effective_at < filters.until)
    if filters.project_ids:
        query = query.where(AuditLogEntry.project_id.in_(filters.project_ids))
    if filters.event_types:
        query = query.where(AuditLogEntry.type.in_(filters.event_types))
    if filters.actor_ids:
        query = query.where(
            AuditLogEntry.actor_id.in_(filters.actor_ids) | AuditLogEntry.actor_key_id.in_(filters.actor_ids)
        )
    if filters.actor_emails:
        query = query.where(AuditLogEntry.actor_email.in_(filters.actor_emails))
    if filters.resource_ids:
        query = query.where(AuditLogEntry.resource_id.in_(filters.resource_ids))
    return keyset_page(
        session,
        query,
        created=AuditLogEntry.effective_at,
        ident=AuditLogEntry.id,
        limit=limit,
        after=after,
        before=before,
        descending=True,
    )
