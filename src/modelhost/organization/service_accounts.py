"""`/v1/organization/projects/{id}/service_accounts`: non-human project members with their own key."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth.policy import KeyKind, ServiceAccountRole
from modelhost.organization import api_keys, audit, projects
from modelhost.organization.common import Scope, listing, not_found, transaction, unix_now
from modelhost.protocol.admin import (
    ListQuery,
    ProjectServiceAccount,
    ProjectServiceAccountList,
    ServiceAccountApiKey,
    ServiceAccountCreated,
    ServiceAccountCreateRequest,
    ServiceAccountDeleted,
)
from modelhost.store import members
from modelhost.store.schema import Project, ServiceAccount

KEY_NAME = "Secret Key"


def _wire(account: ServiceAccount) -> ProjectServiceAccount:
    return ProjectServiceAccount(
        id=account.id, name=account.name, role=account.role if account.role == ServiceAccountRole.NONE else ServiceAccountRole.MEMBER,
        created_at=unix_now(account.created_at),
    )


def _find(session: Session, scope: Scope, project: Project, account_id: str) -> ServiceAccount:
    account = members.get_service_account(session, project.id, account_id)
    if account is None:
        raise not_found("service account", account_id)
    return account


def create(
    sessions: sessionmaker[Session], scope: Scope, project_id: str, body: ServiceAccountCreateRequest
) -> ServiceAccountCreated:
    """A new service account and, unless asked otherwise, its `sk-svcacct-` key (shown only here)."""
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id, active=True)
        only = bool(body.create_service_account_only)
        account = members.create_service_account(
            session, project, body.name, ServiceAccountRole.NONE if only else ServiceAccountRole.MEMBER
        )
        audit.record(session, scope, "service_account.created", account.id, {"data": {"role": account.role}}, project=project)
        api_key = None
        if not only:
            minted = api_keys.mint(
                session, scope, kind=KeyKind.SERVICE_ACCOUNT, name=KEY_NAME, service_account_id=account.id, project=project
            )
            key = minted.key
            api_key = ServiceAccountApiKey(value=minted.secret, name=key.name, created_at=unix_now(key.created_at), id=key.id)
        return ServiceAccountCreated(
            id=account.id,
            name=account.name,
            role=ServiceAccountRole.NONE if only else ServiceAccountRole.MEMBER,
            created_at=unix_now(account.created_at),
            api_key=api_key,
        )


def list_accounts(
    sessions: sessionmaker[Session], scope: Scope, project_id: str, query: ListQuery
) -> ProjectServiceAccountList:
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id)
        page = members.list_service_accounts(session, project.id, limit=query.limit, after=query.after)
        return listing(ProjectServiceAccountList, [_wire(a) for a in page.items], page.has_more)


def get(sessions: sessionmaker[Session], scope: Scope, project_id: str, account_id: str) -> ProjectServiceAccount:
    with transaction(sessions) as session:
        return _wire(_find(session, scope, projects.find(session, scope, project_id), account_id))


def delete(sessions: sessionmaker[Session], scope: Scope, project_id: str, account_id: str) -> ServiceAccountDeleted:
    """Delete the service account; its keys are revoked with it."""
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id)
        account = _find(session, scope, project, account_id)
        members.delete_service_account(session, account)
        audit.record(session, scope, "service_account.deleted", account.id, project=project)
        return ServiceAccountDeleted(id=account.id)
