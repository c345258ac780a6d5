"""`/v1/organization/audit_logs`: recording events with their actor, and listing them."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth.policy import KeyKind
from modelhost.errors import InvalidRequest
from modelhost.organization.common import Scope, listing, transaction, unix_now
from modelhost.protocol.admin import (
    AuditLog,
    AuditLogActor,
    AuditLogActorApiKey,
    AuditLogList,
    AuditLogProject,
    AuditLogQuery,
    AuditLogServiceAccount,
    AuditLogUser,
)
from modelhost.store import audit, tenancy
from modelhost.store.schema import AuditLogEntry, Project


def actor_of(session: Session, scope: Scope) -> audit.AuditActor | None:
    """The audit actor of `scope`: the key and the user (or service account) behind it; None for the CLI."""
    principal = scope.principal
    if principal is None:
        return None
    if principal.key_kind == KeyKind.SERVICE_ACCOUNT:
        wire = AuditLogActor(
            type="api_key",
            api_key=AuditLogActorApiKey(
                id=principal.key_id,
                type="service_account",
                service_account=AuditLogServiceAccount(id=principal.user_id),
            ),
        )
        email = None
    else:
        user = tenancy.get_user(session, principal.user_id)
        email = user.email if user else None
        wire = AuditLogActor(
            type="api_key",
            api_key=AuditLogActorApiKey(id=principal.key_id, type="user", user=AuditLogUser(id=principal.user_id, email=email)),
        )
    return audit.AuditActor(
        actor_id=principal.user_id, key_id=principal.key_id, email=email, wire=wire.model_dump(mode="json")
    )


def record(
    session: Session,
    scope: Scope,
    event_type: str,
    resource_id: str,
    details: dict[str, object] | None = None,
    *,
    project: Project | None = None,
) -> None:
    """Add the event (e.g. ``project.created``) in the caller's transaction; `details` lands under its type."""
    audit.add_event(
        session,
        scope.organization_id,
        event_type,
        actor=actor_of(session, scope),
        resource_id=resource_id,
        details={"id": resource_id, **(details or {})},
        project=(project.id, project.name) if project is not None else None,
    )


def _bounds(query: AuditLogQuery) -> tuple[datetime | None, datetime | None]:
    """effective_at[gt|gte|lt|lte] in whole seconds as [since, until) over stored (sub-second) times."""
    bounds = query.effective_at
    if bounds is None:
        return None, None
    lows = [s for s in (bounds.gte, None if bounds.gt is None else bounds.gt + 1) if s is not None]
    highs = [s for s in (bounds.lt, None if bounds.lte is None else bounds.lte + 1) if s is not None]
    since = datetime.fromtimestamp(max(lows), timezone.utc) if lows else None
    until = datetime.fromtimestamp(min(highs), timezone.utc) if highs else None
    return since, until


def _wire(entry: AuditLogEntry) -> AuditLog:
    return AuditLog.model_validate(
        {
            "id": entry.id,
            "type": entry.type,
            "effective_at": unix_now(entry.effective_at),
            "project": AuditLogProject(id=entry.project_id, name=entry.project_name) if entry.project_id else None,
            "actor": entry.actor,
            entry.type: entry.details,
        }
    )


def list_events(sessions: sessionmaker[Session], scope: Scope, query: AuditLogQuery) -> AuditLogList:
    """The organization's events, newest first."""
    if query.after and query.before:
        raise InvalidRequest("Give 'after' or 'before', not both.", param="before", code="invalid_value")
    since, until = _bounds(query)
    filters = audit.AuditFilter(
        since=since,
        until=until,
        project_ids=query.project_ids,
        event_types=query.event_types,
        actor_ids=query.actor_ids,
        actor_emails=query.actor_emails,
        resource_ids=query.resource_ids,
    )
    with transaction(sessions) as session:
        page = audit.list_events(
            session, scope.organization_id, filters, limit=query.limit, after=query.after, before=query.before
        )
        return listing(AuditLogList, [_wire(e) for e in page.items], page.has_more)
