"""Users, organizations, projects, memberships and keys: the store's half of tenancy.

Functions take an open `Session` and commit nothing themselves; the caller owns the transaction.
Secrets never reach this module: keys arrive already hashed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from modelhost.ids import new_id
from modelhost.store.schema import ApiKey, Membership, Organization, Project, User


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TenancyConflict(Exception):
    """The object cannot be created or changed as asked (duplicate, unknown parent)."""


@dataclass(frozen=True)
class KeyRecord:
    """What authentication needs to know about a stored key and its owners."""

    key_id: str
    kind: str
    secret_hash: str
    user_id: str
    organization_id: str | None
    project_id: str | None
    project_status: str | None
    revoked: bool


def create_organization(session: Session, name: str, owner: User | None = None) -> Organization:
    """A new organization with its default project; `owner` (if given) becomes its owner."""
    org = Organization(id=new_id("org-"), name=name, created_at=utcnow())
    session.add(org)
    session.flush()
    create_project(session, org.id, "Default project", is_default=True)
    if owner is not None:
        add_member(session, owner, org.id, "owner")
    return org


def create_project(session: Session, organization_id: str, name: str, *, is_default: bool = False) -> Project:
    if session.get(Organization, organization_id) is None:
        raise TenancyConflict(f"No organization {organization_id!r}.")
    project = Project(
        id=new_id("proj_"),
        organization_id=organization_id,
        name=name,
        is_default=is_default,
        status="active",
        created_at=utcnow(),
    )
    session.add(project)
    session.flush()
    return project


def archive_project(session: Session, project_id: str) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise TenancyConflict(f"No project {project_id!r}.")
    if project.is_default:
        raise TenancyConflict("The default project of an organization cannot be archived.")
    project.status = "archived"
    project.archived_at = utcnow()
    return project


def create_user(session: Session, email: str, name: str | None = None) -> User:
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise TenancyConflict(f"A user with email {email!r} exists already.")
    user = User(id=new_id("user-"), email=email, name=name or email.split("@")[0], created_at=utcnow())
    session.add(user)
    session.flush()
    return user


def add_member(session: Session, user: User, organization_id: str, role: str) -> Membership:
    """Put `user` in the organization; their first organization becomes their default."""
    if role not in ("owner", "reader"):
        raise TenancyConflict(f"Unknown role {role!r}; use owner or reader.")
    if session.get(Organization, organization_id) is None:
        raise TenancyConflict(f"No organization {organization_id!r}.")
    existing = session.scalar(
        select(Membership).where(Membership.user_id == user.id, Membership.organization_id == organization_id)
    )
    if existing is not None:
        existing.role = role
        return existing
    membership = Membership(user_id=user.id, organization_id=organization_id, role=role, created_at=utcnow())
    session.add(membership)
    if user.default_organization_id is None:
        user.default_organization_id = organization_id
    session.flush()
    return membership


def find_user(session: Session, id_or_email: str) -> User | None:
    return session.scalar(select(User).where((User.id == id_or_email) | (User.email == id_or_email)))


def find_organization(session: Session, id_or_name: str) -> Organization | None:
    org = session.get(Organization, id_or_name)
    return org or session.scalar(select(Organization).where(Organization.name == id_or_name).limit(1))


def default_project(session: Session, organization_id: str) -> Project | None:
    return session.scalar(
        select(Project).where(Project.organization_id == organization_id, Project.is_default.is_(True))
    )


def is_member(session: Session, user_id: str, organization_id: str) -> bool:
    return (
        session.scalar(
            select(Membership.id).where(Membership.user_id == user_id, Membership.organization_id == organization_id)
        )
        is not None
    )


def add_key(
    session: Session,
    *,
    kind: str,
    secret_hash: str,
    redacted_value: str,
    name: str,
    user_id: str,
    organization_id: str | None,
    project_id: str | None,
) -> ApiKey:
    key = ApiKey(
        id=new_id("key_", 16),
        kind=kind,
        secret_hash=secret_hash,
        redacted_value=redacted_value,
        name=name,
        user_id=user_id,
        organization_id=organization_id,
        project_id=project_id,
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise TenancyConflict(f"No key {key_id!r}.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def key_by_hash(session: Session, secret_hash: str) -> KeyRecord | None:
    """The key stored under `secret_hash` (a bound parameter, never interpolated), with its project state."""
    row = session.execute(
        select(ApiKey, Project.status)
        .outerjoin(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.secret_hash == secret_hash)
    ).first()
    if row is None:
        return None
    key, project_status = row
    return KeyRecord(
        key_id=key.id,
        kind=key.kind,
        secret_hash=key.secret_hash,
        user_id=key.user_id,
        organization_id=key.organization_id,
        project_id=key.project_id,
        project_status=project_status,
        revoked=key.revoked_at is not None,
    )


def touch_keys(session: Session, last_used: dict[str, datetime]) -> None:
    """Write the newest `last_used_at` of each key (batched by the caller, not per request)."""
    for key_id, when in last_used.items():
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))
