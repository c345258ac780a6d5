"""`/v1/organization/projects/{project_id}/service_accounts`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc, sessions
from modelhost.organization import Scope, service_accounts
from modelhost.protocol.admin import (
    ListQuery,
    ProjectServiceAccount,
    ProjectServiceAccountList,
    ServiceAccountCreated,
    ServiceAccountCreateRequest,
    ServiceAccountDeleted,
)

router = APIRouter(
    prefix="/v1/organization/projects/{project_id}/service_accounts",
    tags=["Projects"],
    dependencies=[Depends(admin_principal)],
    responses=ERRORS,
)


@router.get("", response_model=ProjectServiceAccountList, openapi_extra=query_doc(ListQuery))
def list_service_accounts(
    project_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectServiceAccountList:
    return service_accounts.list_accounts(sessions(request), scope, project_id, parse_query(request, ListQuery))


@router.post("", response_model=ServiceAccountCreated)
def create_service_account(
    project_id: str, body: ServiceAccountCreateRequest, request: Request, scope: Scope = Depends(admin_scope)
) -> ServiceAccountCreated:
    return service_accounts.create(sessions(request), scope, project_id, body)


@router.get("/{service_account_id}", response_model=ProjectServiceAccount)
def retrieve_service_account(
    project_id: str, service_account_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectServiceAccount:
    return service_accounts.get(sessions(request), scope, project_id, service_account_id)


@router.delete("/{service_account_id}", response_model=ServiceAccountDeleted)
def delete_service_account(
    project_id: str, service_account_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ServiceAccountDeleted:
    return service_accounts.delete(sessions(request), scope, project_id, service_account_id)
