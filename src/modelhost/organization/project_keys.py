"""`/v1/organization/projects/{id}/api_keys`: a project's keys. Listed, read, deleted; never created here."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth.policy import NO_ROLE
from modelhost.errors import InvalidRequest
from modelhost.organization import api_keys, projects
from modelhost.organization.common import Scope, listing, not_found, transaction, unix, unix_now
from modelhost.protocol.admin import (
    ProjectApiKey,
    ProjectApiKeyDeleted,
    ProjectApiKeyList,
    ProjectApiKeyListQuery,
    ProjectApiKeyOwner,
    ProjectApiKeyOwnerServiceAccount,
    ProjectApiKeyOwnerUser,
)
from modelhost.store import members, tenancy
from modelhost.store.schema import ApiKey, Project, ServiceAccount


def _owner(session: Session, project: Project, key: ApiKey) -> ProjectApiKeyOwner:
    if key.service_account_id is not None:
        account = session.get(ServiceAccount, key.service_account_id)
        assert account is not None
        return ProjectApiKeyOwner(
            type="service_account",
            service_account=ProjectApiKeyOwnerServiceAccount(
                id=account.id, name=account.name, created_at=unix_now(account.created_at),
                role=NO_ROLE if account.deleted_at else account.role,
            ),
        )
    assert key.user_id is not None
    user = tenancy.get_user(session, key.user_id)
    assert user is not None
    return ProjectApiKeyOwner(
        type="user",
        user=ProjectApiKeyOwnerUser(
            id=user.id, email=user.email, name=user.name, created_at=unix_now(user.created_at),
            role=members.project_role(session, project, user.id) or NO_ROLE,
        ),
    )


def _wire(session: Session, project: Project, key: ApiKey, owner_access: bool) -> ProjectApiKey:
    return ProjectApiKey(
        id=key.id,
        name=key.name,
        redacted_value=key.redacted_value,
        created_at=unix_now(key.created_at),
        last_used_at=unix(key.last_used_at),
        owner_project_access="active" if owner_access else "inactive",
        owner=_owner(session, project, key),
    )


def list_keys(
    sessions: sessionmaker[Session], scope: Scope, project_id: str, query: ProjectApiKeyListQuery
) -> ProjectApiKeyList:
    access = None if query.owner_project_access == "any" else query.owner_project_access
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id)
        page = tenancy.list_project_keys(session, project.id, limit=query.limit, after=query.after, owner_access=access)
        return listing(
            ProjectApiKeyList, [_wire(session, project, k, bool(a)) for k, a in page.items], page.has_more
        )


def _find(session: Session, project: Project, key_id: str) -> tuple[ApiKey, bool]:
    found = tenancy.project_key(session, project.id, key_id)
    if found is None:
        raise not_found("API key", key_id)
    return found


def get(sessions: sessionmaker[Session], scope: Scope, project_id: str, key_id: str) -> ProjectApiKey:
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id)
        return _wire(session, project, *_find(session, project, key_id))


def delete(sessions: sessionmaker[Session], scope: Scope, project_id: str, key_id: str) -> ProjectApiKeyDeleted:
    """Revoke a user's project key. A service account's key goes with its service account, as at OpenAI."""
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id)
        key, _ = _find(session, project, key_id)
        if key.service_account_id is not None:
            raise InvalidRequest(
                f"Key {key.id} belongs to service account {key.service_account_id}; delete the service account instead."
            )
        api_keys.revoke(session, key, scope)
        return ProjectApiKeyDeleted(id=key.id)
