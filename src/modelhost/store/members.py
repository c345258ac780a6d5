"""Project members, service accounts and invites: who may join and act in an organization's projects.

Functions take an open `Session` and commit nothing themselves; the caller owns the transaction.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhost.auth import policy
from modelhost.auth.policy import ProjectRole
from modelhost.ids import new_id
from modelhost.store.pages import Page, keyset_page
from modelhost.store.schema import Invite, Project, ProjectMembership, ServiceAccount, User
from modelhost.store.tenancy import TenancyConflict, membership, revoke_keys, user_may_use_project, utcnow


# -- project members ----------------------------------------------------------------------------
def project_role(session: Session, project: Project, user_id: str) -> str | None:
    """The user's role in the project (`policy.project_role`): its own membership's, else owner for organization owners."""
    explicit = project_membership(session, project.id, user_id)
    member = membership(session, user_id, project.organization_id)
    return policy.project_role(member.role if member else None, explicit.role if explicit else None)


def may_use_project(session: Session, project: Project, user_id: str) -> bool:
    """Whether the user may use the project (`tenancy.user_may_use_project` states the rule)."""
    return bool(session.scalar(select(user_may_use_project(user_id, project.organization_id, project.id))))


def project_membership(session: Session, project_id: str, user_id: str) -> ProjectMembership | None:
    return session.scalar(
        select(ProjectMembership).where(ProjectMembership.project_id == project_id, ProjectMembership.user_id == user_id)
    )


def add_project_member(session: Session, project: Project, user: User, role: str) -> ProjectMembership:
    if role not in ProjectRole.ALL:
        raise TenancyConflict(f"Unknown project role {role!r}; use {' or '.join(ProjectRole.ALL)}.")
    if membership(session, user.id, project.organization_id) is None:
        raise TenancyConflict(f"User {user.id} is not a member of the project's organization.")
    if project_membership(session, project.id, user.id) is not None:
        raise TenancyConflict(f"User {user.id} is already a member of project {project.id}.")
    added = ProjectMembership(project_id=project.id, user_id=user.id, role=role, created_at=utcnow())
    session.add(added)
    session.flush()
    return added


def list_project_members(session: Session, project_id: str, *, limit: int, after: str | None) -> Page[Any]:
    """(ProjectMembership, User) rows of the project, in the order they were added."""
    query = (
        select(ProjectMembership, User)
        .join(User, User.id == ProjectMembership.user_id)
        .where(ProjectMembership.project_id == project_id)
    )
    return keyset_page(
        session, query, created=ProjectMembership.created_at, ident=User.id, limit=limit, after=after, scalars=False
    )


def remove_project_member(session: Session, member: ProjectMembership) -> None:
    """Take the user out of the project, revoking the keys they hold for it."""
    project = session.get(Project, member.project_id)
    assert project is not None
    revoke_keys(session, organization_id=project.organization_id, user_id=member.user_id, project_id=project.id)
    session.delete(member)
    session.flush()


# -- service accounts ---------------------------------------------------------------------------
def create_service_account(session: Session, project: Project, name: str, role: str) -> ServiceAccount:
    account = ServiceAccount(
        id=new_id("svc_acct_"),
        organization_id=project.organization_id,
        project_id=project.id,
        name=name,
        role=role,
        created_at=utcnow(),
    )
    session.add(account)
    session.flush()
    return account


def get_service_account(session: Session, project_id: str, account_id: str) -> ServiceAccount | None:
    return session.scalar(
        select(ServiceAccount).where(
            ServiceAccount.id == account_id,
            ServiceAccount.project_id == project_id,
            ServiceAccount.deleted_at.is_(None),
        )
    )


def list_service_accounts(session: Session, project_id: str, *, limit: int, after: str | None) -> Page[ServiceAccount]:
    query = select(ServiceAccount).where(ServiceAccount.project_id == project_id, ServiceAccount.deleted_at.is_(None))
    return keyset_page(
        session, query, created=ServiceAccount.created_at, ident=ServiceAccount.id, limit=limit, after=after
    )


def delete_service_account(session: Session, account: ServiceAccount) -> None:
    """Mark the account deleted (usage and audit rows still name it) and revoke its keys."""
    account.deleted_at = utcnow()
    revoke_keys(session, organization_id=account.organization_id, service_account_id=account.id)


# -- invites ------------------------------------------------------------------------------------
def create_invite(
    session: Session,
    organization_id: str,
    email: str,
    role: str,
    projects: list[dict[str, str]],
    lifetime: timedelta,
) -> Invite:
    now = utcnow()
    invite = Invite(
        id=new_id("invite-"),
        organization_id=organization_id,
        email=email,
        role=role,
        projects=projects,
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(invite)
    session.flush()
    return invite


def get_invite(session: Session, invite_id: str, organization_id: str | None = None) -> Invite | None:
    query = select(Invite).where(Invite.id == invite_id)
    if organization_id is not None:
        query = query.where(Invite.organization_id == organization_id)
    return session.scalar(query)


def open_invite(session: Session, organization_id: str, email: str) -> Invite | None:
    """The invite of `email` into the organization that is neither accepted nor expired."""
    return session.scalar(
        select(Invite).where(
            Invite.organization_id == organization_id,
            Invite.email == email,
            Invite.accepted_at.is_(None),
            Invite.expires_at > utcnow(),
        )
    )


def list_invites(session: Session, organization_id: str, *, limit: int, after: str | None) -> Page[Invite]:
    query = select(Invite).where(Invite.organization_id == organization_id)
    return keyset_page(session, query, created=Invite.created_at, ident=Invite.id, limit=limit, after=after)


def delete_invite(session: Session, invite: Invite) -> None:
    session.delete(invite)
    session.flush()
