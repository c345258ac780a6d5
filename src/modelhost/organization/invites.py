"""`/v1/organization/invites`: invitations into an organization, and accepting one (a CLI action)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from modelhost.errors import InvalidRequest, NotFound
from modelhost.organization import audit, project_users, users
from modelhost.organization.common import Scope, listing, not_found, transaction, unix, unix_now
from modelhost.protocol.admin import Invite, InviteDeleted, InviteList, InviteProject, InviteRequest, ListQuery
from modelhost.store import members, tenancy
from modelhost.store.schema import Invite as StoredInvite

#: How long an invite can be accepted.
INVITE_LIFETIME = timedelta(days=7)


def _status(invite: StoredInvite, now: datetime) -> str:
    if invite.accepted_at is not None:
        return "accepted"
    expires = tenancy.as_utc(invite.expires_at)
    return "expired" if expires is not None and expires <= now else "pending"


def _wire(invite: StoredInvite) -> Invite:
    return Invite.model_validate(
        {
            "id": invite.id,
            "email": invite.email,
            "role": invite.role,
            "status": _status(invite, tenancy.utcnow()),
            "created_at": unix_now(invite.created_at),
            "expires_at": unix(invite.expires_at),
            "accepted_at": unix(invite.accepted_at),
            "projects": invite.projects,
        }
    )


def create(sessions: sessionmaker[Session], scope: Scope, body: InviteRequest) -> Invite:
    email = body.email.strip()
    with transaction(sessions) as session:
        existing = tenancy.find_user(session, email)
        if existing is not None and tenancy.membership(session, existing.id, scope.organization_id) is not None:
            raise InvalidRequest(f"{email} is already a member of this organization.", param="email")
        if members.open_invite(session, scope.organization_id, email) is not None:
            raise InvalidRequest(f"{email} has a pending invite already; delete it to send a new one.", param="email")
        granted: list[dict[str, str]] = []
        for i, wanted in enumerate(body.projects):
            project = tenancy.get_project(session, scope.organization_id, wanted.id)
            if project is None:
                raise NotFound(f"No project found with id '{wanted.id}'.", param=f"projects[{i}].id")
            if project.status != "active" or any(g["id"] == project.id for g in granted):
                raise InvalidRequest(
                    f"Project {project.id} is archived or listed twice.", param=f"projects[{i}].id"
                )
            granted.append(InviteProject(id=project.id, role=wanted.role).model_dump())
        invite = members.create_invite(session, scope.organization_id, email, body.role, granted, INVITE_LIFETIME)
        audit.record(session, scope, "invite.sent", invite.id, {"data": {"email": email, "role": body.role}})
        return _wire(invite)


def list_invites(sessions: sessionmaker[Session], scope: Scope, query: ListQuery) -> InviteList:
    with transaction(sessions) as session:
        page = members.list_invites(session, scope.organization_id, limit=query.limit, after=query.after)
        return listing(InviteList, [_wire(i) for i in page.items], page.has_more)


def _find(session: Session, scope: Scope, invite_id: str) -> StoredInvite:
    invite = members.get_invite(session, invite_id, scope.organization_id)
    if invite is None:
        raise not_found("invite", invite_id)
    return invite


def get(sessions: sessionmaker[Session], scope: Scope, invite_id: str) -> Invite:
    with transaction(sessions) as session:
        return _wire(_find(session, scope, invite_id))


def delete(sessions: sessionmaker[Session], scope: Scope, invite_id: str) -> InviteDeleted:
    """Withdraw a pending (or expired) invite; an accepted one is history and stays."""
    with transaction(sessions) as session:
        invite = _find(session, scope, invite_id)
        if invite.accepted_at is not None:
            raise InvalidRequest(f"Invite {invite.id} was accepted already; remove the user instead.")
        members.delete_invite(session, invite)
        audit.record(session, scope, "invite.deleted", invite_id)
        return InviteDeleted(id=invite_id)


def accept(sessions: sessionmaker[Session], invite_id: str, email: str, name: str | None = None) -> Invite:
    """Accept the invite as `email` (it must be the invited address): the user joins, with its projects.

    The user is created if no user has that email yet. This is the console's job at OpenAI; here
    the operator runs it with `modelhost invites accept`.
    """
    with transaction(sessions) as session:
        invite = members.get_invite(session, invite_id)
        if invite is None:
            raise not_found("invite", invite_id)
        if invite.email.lower() != email.strip().lower():
            raise InvalidRequest(f"Invite {invite.id} is for another email address.", param="email")
        status = _status(invite, tenancy.utcnow())
        if status != "pending":
            raise InvalidRequest(f"Invite {invite.id} is {status}; ask for a new one.")
        scope = Scope(invite.organization_id)
        user = tenancy.find_user(session, invite.email) or tenancy.create_user(session, invite.email, name)
        users.add(session, scope, user, invite.role)
        for granted in invite.projects:
            project = tenancy.get_project(session, scope.organization_id, granted["id"])
            if project is not None and project.status == "active" and not members.project_membership(
                session, project.id, user.id
            ):
                project_users.add_member(session, scope, project, user, granted["role"])
        invite.accepted_at = tenancy.utcnow()
        audit.record(session, scope, "invite.accepted", invite.id)
        return _wire(invite)
