"""What the local operator does from the CLI, sharing the Administration API's code.

Each function opens its own transaction. Projects and invites are answered with the API's wire
models; keys of every kind, organizations and users across organizations have no API object, so
their shapes are the CLI's. Changes to an organization are written to its audit log with no actor
(the CLI acts without a key).
"""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth.policy import KeyKind, ProjectRole
from modelhost.errors import InvalidRequest, NotFound
from modelhost.organization import Scope, admin_keys, api_keys, bootstrap, invites, projects, users
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
        owner = bootstrap.find_user(session, user)
        org_id = bootstrap.find_organization(session, organization).id if organization else owner.default_organization_id
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
        user = bootstrap.find_user(session, owner)
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
        org_id = bootstrap.find_organization(session, organization).id
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
            query = query.where(Project.organization_id == bootstrap.find_organization(session, organization).id)
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
        member = bootstrap.find_user(session, user)
        try:
            users.add(session, Scope(bootstrap.find_organization(session, organization).id), member, role)
        except tenancy.TenancyConflict as exc:
            raise InvalidRequest(str(exc)) from exc
        session.commit()
        return {"user": member.id, "organization": bootstrap.find_organization(session, organization).id, "role": role}


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
def create_invite(
    sessions: sessionmaker[Session], email: str, role: str, organization: str | None, projects_roles: list[str]
) -> Invite:
    """Invite `email`; `projects_roles` holds ``PROJECT_ID`` or ``PROJECT_ID:ROLE`` (role member or owner)."""
    wanted = []
    for item in projects_roles:
        project_id, _, project_role = item.partition(":")
        wanted.append({"id": project_id, "role": project_role or ProjectRole.MEMBER})
    with sessions() as session:
        org_id = bootstrap.organization_or_default(session, organization)
    try:
        body = InviteRequest.model_validate({"email": email, "role": role, "projects": wanted})
    except ValidationError as exc:
        raise InvalidRequest(f"Invalid invite: {exc.errors()[0]['msg']}.") from None
    return invites.create(sessions, Scope(org_id), body)


def list_invites(sessions: sessionmaker[Session], organization: str | None) -> InviteList:
    with sessions() as session:
        org_id = bootstrap.organization_or_default(session, organization)
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
