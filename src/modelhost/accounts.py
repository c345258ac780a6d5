"""Tenancy operations of the CLI, sharing the Administration API's code (`modelhost.organization`).

Each function opens its own transaction and returns plain dicts ready to print as JSON. Changes
to an organization are written to its audit log with no actor (the CLI acts without a key).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.errors import InvalidRequest, NotFound
from modelhost.auth.policy import KeyKind, ProjectRole
from modelhost.organization import Scope, admin_keys, api_keys, invites, projects, users
from modelhost.organization.common import every_item, listing
from modelhost.protocol.admin import (
    AdminApiKeyCreateRequest,
    Invite,
    InviteDeleted,
    InviteList,
    InviteRequest,
    ListQuery,
    ProjectCreateRequest,
    ProjectList,
)
from modelhost.protocol.admin import Project as WireProject
from modelhost.store import members, tenancy
from modelhost.store.schema import ApiKey, Membership, Organization, Project, User

DEFAULT_OWNER_EMAIL = "owner@localhost"


@dataclass(frozen=True)
class Bootstrap:
    created: bool
    organization_id: str
    project_id: str
    user_id: str
    user_email: str


def bootstrap(sessions: sessionmaker[Session], owner_email: str = DEFAULT_OWNER_EMAIL) -> Bootstrap:
    """On an empty store, create the first owner, organization and default project.

    Replicas starting together on one empty database race here; the owner's unique email lets
    exactly one of them create the organization (owner, organization and project are one
    transaction). The others find the owner there already (or are refused by the constraint when
    both inserted it at once) and, trying again, read what the winner created.
    """
    try:
        return _bootstrap_once(sessions, owner_email)
    except (IntegrityError, tenancy.TenancyConflict):
        return _bootstrap_once(sessions, owner_email)


def _bootstrap_once(sessions: sessionmaker[Session], owner_email: str) -> Bootstrap:
    with sessions() as session:
        owner = session.scalar(select(User).order_by(User.created_at).limit(1))
        if owner is not None and owner.default_organization_id:
            project = tenancy.default_project(session, owner.default_organization_id)
            assert project is not None
            return Bootstrap(False, owner.default_organization_id, project.id, owner.id, owner.email)
        owner = owner or tenancy.create_user(session, owner_email, "Owner")
        org = tenancy.create_organization(session, "Personal", owner)
        session.commit()
        project = tenancy.default_project(session, org.id)
        assert project is not None
        return Bootstrap(True, org.id, project.id, owner.id, owner.email)


def _user(session: Session, who: str | None) -> User:
    if who is None:
        user = session.scalar(select(User).order_by(User.created_at).limit(1))
    else:
        user = tenancy.find_user(session, who)
    if user is None:
        raise NotFound(f"No user {who!r}.")
    return user


def _org(session: Session, which: str) -> Organization:
    org = tenancy.find_organization(session, which)
    if org is None:
        raise NotFound(f"No organization {which!r}.")
    return org


def create_key(
    sessions: sessionmaker[Session],
    *,
    user: str | None = None,
    organization: str | None = None,
    project: str | None = None,
    kind: str = KeyKind.PROJECT,
    name: str = "default",
) -> dict[str, object]:
    """A new key; the secret is in the returned dict and nowhere else, ever again.

    Kinds: ``project`` (sk-proj-…), ``user`` (sk-…) and ``admin`` (sk-admin-…, for the
    Administration API of the organization; the user must be one of its owners).
    """
    if kind not in (KeyKind.USER, KeyKind.PROJECT, KeyKind.ADMIN):
        raise InvalidRequest("kind is 'user', 'project' or 'admin'.")
    with sessions() as session:
        owner = _user(session, user)
        org_id = _org(session, organization).id if organization else owner.default_organization_id
        if org_id is None or not tenancy.is_member(session, owner.id, org_id):
            raise InvalidRequest(f"User {owner.email} is not a member of organization {org_id}.")
    if kind == KeyKind.ADMIN:
        created = admin_keys.create(sessions, Scope(org_id), AdminApiKeyCreateRequest(name=name), owner_id=owner.id)
        return {
            "id": created.id,
            "secret": created.value,
            "kind": kind,
            "name": name,
            "user": owner.id,
            "organization": org_id,
            "project": None,
        }
    with sessions() as session:
        if project:
            chosen = session.get(Project, project)
            if chosen is None or chosen.organization_id != org_id:
                raise NotFound(f"No project {project!r} in organization {org_id}.")
        else:
            chosen = tenancy.default_project(session, org_id)
            assert chosen is not None
        if chosen.status != "active":
            raise InvalidRequest(f"Project {chosen.id} is archived.")
        if kind == KeyKind.PROJECT and not members.may_use_project(session, chosen, owner.id):
            # Authentication would refuse such a key anyway (its owner has no access to the project).
            raise InvalidRequest(
                f"User {owner.email} is not a member of project {chosen.id}; add them to it first "
                "(POST /v1/organization/projects/{project_id}/users), or make them an owner of the organization."
            )
        bound = kind == KeyKind.PROJECT  # a user key is bound to no organization or project
        minted = api_keys.mint(
            session, Scope(org_id) if bound else None, kind=kind, name=name, user_id=owner.id, project=chosen if bound else None
        )
        session.commit()
        return {
            "id": minted.key.id,
            "secret": minted.secret,
            "kind": kind,
            "name": name,
            "user": owner.id,
            "organization": org_id,
            "project": chosen.id,
        }


def list_keys(sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    with sessions() as session:
        return [_key_view(key) for key in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]


def revoke_key(sessions: sessionmaker[Session], key_id: str) -> dict[str, object]:
    with sessions() as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise NotFound(f"No key {key_id!r}.")
        api_keys.revoke(session, key)
        session.commit()
        return _key_view(key)


def _key_view(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "kind": key.kind,
        "name": key.name,
        "redacted_value": key.redacted_value,
        "user": key.user_id,
        "organization": key.organization_id,
        "project": key.project_id,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked": key.revoked_at is not None,
    }


def create_organization(sessions: sessionmaker[Session], name: str, owner: str | None = None) -> dict[str, object]:
    with sessions() as session:
        user = _user(session, owner)
        org = tenancy.create_organization(session, name, user)
        session.commit()
        project = tenancy.default_project(session, org.id)
        assert project is not None
        return {"id": org.id, "name": org.name, "owner": user.id, "default_project": project.id}


def list_organizations(sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    with sessions() as session:
        return [
            {"id": o.id, "name": o.name, "created_at": o.created_at.isoformat()}
            for o in session.scalars(select(Organization).order_by(Organization.created_at))
        ]


def create_project(sessions: sessionmaker[Session], organization: str, name: str) -> WireProject:
    with sessions() as session:
        org_id = _org(session, organization).id
    return projects.create(sessions, Scope(org_id), ProjectCreateRequest(name=name))


def archive_project(sessions: sessionmaker[Session], project_id: str) -> WireProject:
    with sessions() as session:
        found = session.get(Project, project_id)
        if found is None:
            raise NotFound(f"No project {project_id!r}.")
    return projects.archive(sessions, Scope(found.organization_id), project_id)  # refuses the default project


def list_projects(sessions: sessionmaker[Session], organization: str | None = None) -> ProjectList:
    """Every project (archived ones too) of the organization, or of all organizations, oldest first."""
    with sessions() as session:
        query = select(Project).order_by(Project.created_at)
        if organization:
            query = query.where(Project.organization_id == _org(session, organization).id)
        return listing(ProjectList, [projects.wire(p) for p in session.scalars(query)], False)


def create_user(sessions: sessionmaker[Session], email: str, name: str | None = None) -> dict[str, object]:
    with sessions() as session:
        try:
            user = tenancy.create_user(session, email, name)
        except tenancy.TenancyConflict as exc:
            raise InvalidRequest(str(exc)) from exc
        session.commit()
        return {"id": user.id, "email": user.email, "name": user.name, "default_organization": None}


def add_member(sessions: sessionmaker[Session], user: str, organization: str, role: str) -> dict[str, object]:
    with sessions() as session:
        member = _user(session, user)
        try:
            users.add(session, Scope(_org(session, organization).id), member, role)
        except tenancy.TenancyConflict as exc:
            raise InvalidRequest(str(exc)) from exc
        session.commit()
        return {"user": member.id, "organization": _org(session, organization).id, "role": role}


def list_users(sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    with sessions() as session:
        users = list(session.scalars(select(User).order_by(User.created_at)))
        roles: dict[str, dict[str, str]] = {}
        for m in session.scalars(select(Membership)):
            roles.setdefault(m.user_id, {})[m.organization_id] = m.role
        return [
            {
                "id": u.id,
                "email": u.email,
                "name": u.name,
                "default_organization": u.default_organization_id,
                "organizations": roles.get(u.id, {}),
            }
            for u in users
        ]


# -- invites (the Administration API's own code; accepting one is only possible here) ----------
def _org_or_default(session: Session, organization: str | None) -> str:
    if organization:
        return _org(session, organization).id
    owner = _user(session, None)
    if owner.default_organization_id is None:
        raise InvalidRequest("Name the organization with --org.")
    return owner.default_organization_id


def create_invite(
    sessions: sessionmaker[Session], email: str, role: str, organization: str | None, projects_roles: list[str]
) -> Invite:
    """Invite `email`; `projects_roles` holds ``PROJECT_ID`` or ``PROJECT_ID:ROLE`` (role member or owner)."""
    wanted = []
    for item in projects_roles:
        project_id, _, project_role = item.partition(":")
        wanted.append({"id": project_id, "role": project_role or ProjectRole.MEMBER})
    with sessions() as session:
        org_id = _org_or_default(session, organization)
    try:
        body = InviteRequest.model_validate({"email": email, "role": role, "projects": wanted})
    except ValidationError as exc:
        raise InvalidRequest(f"Invalid invite: {exc.errors()[0]['msg']}.") from None
    return invites.create(sessions, Scope(org_id), body)


def list_invites(sessions: sessionmaker[Session], organization: str | None) -> InviteList:
    with sessions() as session:
        org_id = _org_or_default(session, organization)
    every = every_item(lambda after: invites.list_invites(sessions, Scope(org_id), ListQuery(limit=100, after=after)))
    return listing(InviteList, every, False)


def accept_invite(sessions: sessionmaker[Session], invite_id: str, email: str, name: str | None) -> Invite:
    return invites.accept(sessions, invite_id, email, name)


def delete_invite(sessions: sessionmaker[Session], invite_id: str) -> InviteDeleted:
    with sessions() as session:
        invite = members.get_invite(session, invite_id)
        if invite is None:
            raise NotFound(f"No invite {invite_id!r}.")
        org_id = invite.organization_id
    return invites.delete(sessions, Scope(org_id), invite_id)
