"""Users, organizations, projects, memberships and keys: the store's half of tenancy.

Functions take an open `Session` and commit nothing themselves; the caller owns the transaction.
Secrets never reach this module: keys arrive already hashed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from modelhost.auth.policy import KeyKind, OrgRole
from modelhost.ids import new_id
from modelhost.store.pages import Page, keyset_page
from modelhost.store.schema import (
    ApiKey,
    Membership,
    Organization,
    Project,
    ProjectMembership,
    ServiceAccount,
    User,
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """`moment` as an aware UTC time (SQLite hands back naive times; all of ours are UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


class TenancyConflict(Exception):
    """The object cannot be created or changed as asked (duplicate, unknown parent)."""


@dataclass(frozen=True)
class KeyRecord:
    """What authentication needs to know about a stored key and its owners."""

    key_id: str
    kind: str
    secret_hash: str
    user_id: str | None
    organization_id: str | None
    project_id: str | None
    project_status: str | None
    revoked: bool
    service_account_id: str | None = None
    expires_at: datetime | None = None
    owner_access: bool = False  # project keys: the owner may still use the project (`owner_has_access`)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def create_organization(session: Session, name: str, owner: User | None = None) -> Organization:
    """A new organization with its default project; `owner` (if given) becomes its owner."""
    org = Organization(id=new_id("org-"), name=name, created_at=utcnow())
    session.add(org)
    session.flush()
    create_project(session, org.id, "Default project", is_default=True)
    if owner is not None:
        add_member(session, owner, org.id, OrgRole.OWNER)
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
    if role not in OrgRole.ALL:
        raise TenancyConflict(f"Unknown role {role!r}; use {' or '.join(OrgRole.ALL)}.")
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
    user_id: str | None,
    organization_id: str | None,
    project_id: str | None,
    service_account_id: str | None = None,
    expires_at: datetime | None = None,
) -> ApiKey:
    assert (user_id is None) != (service_account_id is None), "a key belongs to a user or a service account"
    key = ApiKey(
        id=new_id("key_", 16),
        kind=kind,
        secret_hash=secret_hash,
        redacted_value=redacted_value,
        name=name,
        user_id=user_id,
        organization_id=organization_id,
        project_id=project_id,
        service_account_id=service_account_id,
        expires_at=expires_at,
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key


def key_by_hash(session: Session, secret_hash: str) -> KeyRecord | None:
    """The key stored under `secret_hash` (a bound parameter, never interpolated), with its project state."""
    return _key_record(session, ApiKey.secret_hash == secret_hash)


def key_by_id(session: Session, key_id: str) -> KeyRecord | None:
    """The key `key_id`, with its project state (work that runs as a stored key: the batch runner)."""
    return _key_record(session, ApiKey.id == key_id)


def _key_record(session: Session, where: ColumnElement[bool]) -> KeyRecord | None:
    row = session.execute(
        select(ApiKey, Project.status, owner_has_access())
        .outerjoin(Project, Project.id == ApiKey.project_id)
        .where(where)
    ).first()
    if row is None:
        return None
    key, project_status, owner_access = row
    return KeyRecord(
        key_id=key.id,
        kind=key.kind,
        secret_hash=key.secret_hash,
        user_id=key.user_id,
        organization_id=key.organization_id,
        project_id=key.project_id,
        project_status=project_status,
        revoked=key.revoked_at is not None,
        service_account_id=key.service_account_id,
        expires_at=as_utc(key.expires_at),
        owner_access=bool(owner_access),
    )


def touch_keys(session: Session, last_used: dict[str, datetime]) -> None:
    """Write the newest `last_used_at` of each key (batched by the caller, not per request)."""
    for key_id, when in last_used.items():
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))


# -- lookups scoped to an organization: another organization's id is simply not found ----------
def get_user(session: Session, user_id: str) -> User | None:
    return session.get(User, user_id)


def get_project(session: Session, organization_id: str, project_id: str) -> Project | None:
    return session.scalar(select(Project).where(Project.id == project_id, Project.organization_id == organization_id))


def list_projects(
    session: Session, organization_id: str, *, include_archived: bool, limit: int, after: str | None
) -> Page[Project]:
    query = select(Project).where(Project.organization_id == organization_id)
    if not include_archived:
        query = query.where(Project.status == "active")
    return keyset_page(session, query, created=Project.created_at, ident=Project.id, limit=limit, after=after)


def membership(session: Session, user_id: str, organization_id: str) -> Membership | None:
    return session.scalar(
        select(Membership).where(Membership.user_id == user_id, Membership.organization_id == organization_id)
    )


def list_members(
    session: Session, organization_id: str, *, emails: list[str], limit: int, after: str | None
) -> Page[Any]:
    """(Membership, User) rows of the organization, in the order they joined."""
    query = (
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.organization_id == organization_id)
    )
    if emails:
        query = query.where(User.email.in_(emails))
    return keyset_page(
        session, query, created=Membership.created_at, ident=User.id, limit=limit, after=after, scalars=False
    )


def owner_count(session: Session, organization_id: str) -> int:
    """How many owners the organization has, locking their rows so two demotions cannot race to zero."""
    owners = select(Membership.id).where(Membership.organization_id == organization_id, Membership.role == OrgRole.OWNER)
    return len(session.scalars(owners.with_for_update()).all())


def _org_projects(organization_id: str) -> Any:
    return select(Project.id).where(Project.organization_id == organization_id).scalar_subquery()


def remove_member(session: Session, member: Membership) -> None:
    """Take the user out of the organization: its projects, their keys there, the membership itself."""
    org_id, user_id = member.organization_id, member.user_id
    session.execute(
        delete(ProjectMembership).where(
            ProjectMembership.user_id == user_id, ProjectMembership.project_id.in_(_org_projects(org_id))
        )
    )
    revoke_keys(session, organization_id=org_id, user_id=user_id)
    session.delete(member)
    session.flush()
    user = session.get(User, user_id)
    if user is not None and user.default_organization_id == org_id:
        user.default_organization_id = session.scalar(
            select(Membership.organization_id).where(Membership.user_id == user_id).order_by(Membership.created_at).limit(1)
        )


# -- keys of an organization --------------------------------------------------------------------
def revoke_keys(
    session: Session,
    *,
    key_id: str | None = None,
    organization_id: str | None = None,
    user_id: str | None = None,
    project_id: str | None = None,
    service_account_id: str | None = None,
) -> None:
    """Revoke the live keys that match every given filter: one key by id, or an owner's keys in an organization.

    The only write of `revoked_at`; `organization.api_keys.revoke` is the audited revocation of one key.
    """
    if not (key_id or (organization_id and (user_id or service_account_id))):
        raise ValueError("revoke one key, or the keys of someone: never every key")  # not an assert: -O drops those
    query = update(ApiKey).where(ApiKey.revoked_at.is_(None))
    if key_id is not None:
        query = query.where(ApiKey.id == key_id)
    if organization_id is not None:
        query = query.where(ApiKey.organization_id == organization_id)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    if project_id is not None:
        query = query.where(ApiKey.project_id == project_id)
    if service_account_id is not None:
        query = query.where(ApiKey.service_account_id == service_account_id)
    session.execute(query.values(revoked_at=utcnow()))


def live_key(session: Session, key_id: str, *, organization_id: str, kinds: tuple[str, ...]) -> ApiKey | None:
    """A key of one of `kinds` bound to the organization that is not revoked."""
    return session.scalar(
        select(ApiKey).where(
            ApiKey.id == key_id,
            ApiKey.organization_id == organization_id,
            ApiKey.kind.in_(kinds),
            ApiKey.revoked_at.is_(None),
        )
    )


def list_admin_keys(
    session: Session, organization_id: str, *, limit: int, after: str | None, descending: bool
) -> Page[ApiKey]:
    query = select(ApiKey).where(
        ApiKey.organization_id == organization_id, ApiKey.kind == KeyKind.ADMIN, ApiKey.revoked_at.is_(None)
    )
    return keyset_page(
        session, query, created=ApiKey.created_at, ident=ApiKey.id, limit=limit, after=after, descending=descending
    )


def user_may_use_project(user_id: Any, organization_id: Any, project_id: Any) -> ColumnElement[bool]:
    """SQL truth of "the user may use the project": the one statement of the rule.

    The user is a member of the project's organization and owns it, or is a member of the project,
    or the project is the organization's default one (open to every member). The arguments are
    values or columns: `members.may_use_project` asks it of one user, `owner_has_access` of every key.
    """
    default = aliased(Project)  # its own alias: `key_by_hash` joins Project in the enclosing query
    default_project = exists().where(default.id == project_id, default.is_default.is_(True))
    org_owner = exists().where(
        Membership.user_id == user_id, Membership.organization_id == organization_id, Membership.role == OrgRole.OWNER
    )
    org_member = exists().where(Membership.user_id == user_id, Membership.organization_id == organization_id)
    project_member = exists().where(ProjectMembership.user_id == user_id, ProjectMembership.project_id == project_id)
    return or_(org_owner, and_(org_member, or_(project_member, default_project)))


def owner_has_access() -> ColumnElement[bool]:
    """SQL truth of "the owner of this project key may still use the project".

    A user's key: `user_may_use_project`; a service account's key: while the account exists.
    Authentication refuses a project key for which this is false, and the Administration API lists
    it as `inactive`.
    """
    service_account_alive = exists().where(
        ServiceAccount.id == ApiKey.service_account_id, ServiceAccount.deleted_at.is_(None)
    )
    user_access = user_may_use_project(ApiKey.user_id, ApiKey.organization_id, ApiKey.project_id)
    return or_(
        and_(ApiKey.kind == KeyKind.SERVICE_ACCOUNT, service_account_alive),
        and_(ApiKey.kind == KeyKind.PROJECT, user_access),
    )


def list_project_keys(
    session: Session, project_id: str, *, limit: int, after: str | None, owner_access: str | None
) -> Page[Any]:
    """(ApiKey, owner has access) rows of the project's live keys; `owner_access` is active/inactive/None."""
    access = owner_has_access()
    query = select(ApiKey, access.label("owner_access")).where(
        ApiKey.project_id == project_id,
        ApiKey.kind.in_((KeyKind.PROJECT, KeyKind.SERVICE_ACCOUNT)),
        ApiKey.revoked_at.is_(None),
    )
    if owner_access == "active":
        query = query.where(access)
    elif owner_access == "inactive":
        query = query.where(~access)
    return keyset_page(
        session, query, created=ApiKey.created_at, ident=ApiKey.id, limit=limit, after=after, scalars=False
    )


def project_key(session: Session, project_id: str, key_id: str) -> tuple[ApiKey, bool] | None:
    """The live key of the project with whether its owner may still use the project."""
    row = session.execute(
        select(ApiKey, owner_has_access()).where(
            ApiKey.id == key_id,
            ApiKey.project_id == project_id,
            ApiKey.kind.in_((KeyKind.PROJECT, KeyKind.SERVICE_ACCOUNT)),
            ApiKey.revoked_at.is_(None),
        )
    ).first()
    return None if row is None else (row[0], bool(row[1]))
