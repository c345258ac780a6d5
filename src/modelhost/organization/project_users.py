"""`/v1/organization/projects/{id}/users`: which of the organization's users belong to a project."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import policy
from modelhost.errors import InvalidRequest, NotFound
from modelhost.organization import audit, projects
from modelhost.organization.common import Scope, listing, not_found, transaction, unix_now
from modelhost.protocol.admin import (
    ListQuery,
    ProjectUser,
    ProjectUserCreateRequest,
    ProjectUserDeleted,
    ProjectUserList,
    ProjectUserUpdateRequest,
)
from modelhost.store import members, tenancy
from modelhost.store.schema import Project, ProjectMembership, User


def _wire(member: ProjectMembership, user: User) -> ProjectUser:
    return ProjectUser(
        id=user.id,
        name=user.name,
        email=user.email,
        role=policy.wire_project_role(member.role),
        added_at=unix_now(member.created_at),
    )


def add_member(session: Session, scope: Scope, project: Project, user: User, role: str) -> ProjectMembership:
    """Put an organization member into the project, in the caller's transaction."""
    member = members.add_project_member(session, project, user, role)
    audit.record(session, scope, "user.added", user.id, {"data": {"role": role}}, project=project)
    return member


def _member(session: Session, scope: Scope, project: Project, user_id: str) -> tuple[ProjectMembership, User]:
    member = members.project_membership(session, project.id, user_id)
    user = tenancy.get_user(session, user_id) if member else None
    if member is None or user is None:
        raise not_found("user", user_id)
    return member, user


def list_users(sessions: sessionmaker[Session], scope: Scope, project_id: str, query: ListQuery) -> ProjectUserList:
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id)
        page = members.list_project_members(session, project.id, limit=query.limit, after=query.after)
        return listing(ProjectUserList, [_wire(m, u) for m, u in page.items], page.has_more)


def add(sessions: sessionmaker[Session], scope: Scope, project_id: str, body: ProjectUserCreateRequest) -> ProjectUser:
    if not body.user_id and not body.email:
        raise InvalidRequest("Missing required parameter: 'user_id'.", param="user_id", code="missing_required_parameter")
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id, active=True)
        wanted = body.user_id or body.email
        assert wanted is not None
        user = tenancy.get_user(session, body.user_id) if body.user_id else tenancy.find_user(session, wanted)
        # A user outside this organization is answered like one that does not exist.
        if user is None or tenancy.membership(session, user.id, scope.organization_id) is None:
            raise NotFound(
                f"No user found with {'id' if body.user_id else 'email'} '{wanted[:128]}' in this organization; "
                "invite them to the organization first.",
                param="user_id" if body.user_id else "email",
            )
        if members.project_membership(session, project.id, user.id) is not None:
            raise InvalidRequest(f"User {user.id} is already a member of project {project.id}.", param="user_id")
        return _wire(add_member(session, scope, project, user, body.role), user)


def get(sessions: sessionmaker[Session], scope: Scope, project_id: str, user_id: str) -> ProjectUser:
    with transaction(sessions) as session:
        return _wire(*_member(session, scope, projects.find(session, scope, project_id), user_id))


def update(
    sessions: sessionmaker[Session], scope: Scope, project_id: str, user_id: str, body: ProjectUserUpdateRequest
) -> ProjectUser:
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id, active=True)
        member, user = _member(session, scope, project, user_id)
        if member.role != body.role:
            member.role = body.role
            audit.record(
                session, scope, "user.updated", user.id, {"changes_requested": {"role": body.role}}, project=project
            )
        return _wire(member, user)


def delete(sessions: sessionmaker[Session], scope: Scope, project_id: str, user_id: str) -> ProjectUserDeleted:
    """Take the user out of the project; the keys they hold for it are revoked."""
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id, active=True)
        member, user = _member(session, scope, project, user_id)
        members.remove_project_member(session, member)
        audit.record(session, scope, "user.deleted", user.id, project=project)
        return ProjectUserDeleted(id=user.id)
