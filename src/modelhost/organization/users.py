"""`/v1/organization/users`: the organization's members, their roles, and removing them."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import policy
from modelhost.errors import InvalidRequest
from modelhost.organization import audit
from modelhost.organization.common import Scope, listing, not_found, transaction, unix_now
from modelhost.protocol.admin import (
    OrganizationUser,
    OrganizationUserList,
    UserDeleted,
    UserListQuery,
    UserRoleUpdateRequest,
)
from modelhost.store import tenancy
from modelhost.store.schema import Membership, User

LAST_OWNER = "An organization keeps at least one owner; make another member an owner first."


def _wire(member: Membership, user: User) -> OrganizationUser:
    return OrganizationUser(
        id=user.id,
        name=user.name,
        email=user.email,
        role=policy.wire_org_role(member.role),
        added_at=unix_now(member.created_at),
    )


def _member(session: Session, scope: Scope, user_id: str) -> tuple[Membership, User]:
    member = tenancy.membership(session, user_id, scope.organization_id)
    user = tenancy.get_user(session, user_id) if member else None
    if member is None or user is None:
        raise not_found("user", user_id)
    return member, user


def add(session: Session, scope: Scope, user: User, role: str) -> Membership:
    """Make `user` a member with `role` (or change their role), in the caller's transaction."""
    before = tenancy.membership(session, user.id, scope.organization_id)
    previous_role = before.role if before else None
    member = tenancy.add_member(session, user, scope.organization_id, role)
    if previous_role is None:
        audit.record(session, scope, "user.added", user.id, {"data": {"role": role}})
    elif previous_role != role:
        audit.record(session, scope, "user.updated", user.id, {"changes_requested": {"role": role}})
    return member


def list_users(sessions: sessionmaker[Session], scope: Scope, query: UserListQuery) -> OrganizationUserList:
    with transaction(sessions) as session:
        page = tenancy.list_members(
            session, scope.organization_id, emails=query.emails, limit=query.limit, after=query.after
        )
        return listing(OrganizationUserList, [_wire(m, u) for m, u in page.items], page.has_more)


def get(sessions: sessionmaker[Session], scope: Scope, user_id: str) -> OrganizationUser:
    with transaction(sessions) as session:
        return _wire(*_member(session, scope, user_id))


def update(sessions: sessionmaker[Session], scope: Scope, user_id: str, body: UserRoleUpdateRequest) -> OrganizationUser:
    with transaction(sessions) as session:
        member, user = _member(session, scope, user_id)
        if policy.leaves_no_owner(member.role, body.role, tenancy.owner_count(session, scope.organization_id)):
            raise InvalidRequest(LAST_OWNER, param="role")
        if member.role != body.role:
            member.role = body.role
            audit.record(session, scope, "user.updated", user.id, {"changes_requested": {"role": body.role}})
        return _wire(member, user)


def delete(sessions: sessionmaker[Session], scope: Scope, user_id: str) -> UserDeleted:
    """Remove the user from the organization and its projects; their keys bound to it are revoked."""
    with transaction(sessions) as session:
        member, user = _member(session, scope, user_id)
        if policy.leaves_no_owner(member.role, None, tenancy.owner_count(session, scope.organization_id)):
            raise InvalidRequest(LAST_OWNER)
        tenancy.remove_member(session, member)
        audit.record(session, scope, "user.deleted", user.id)
        return UserDeleted(id=user.id)
