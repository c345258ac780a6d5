"""`/v1/organization/admin_api_keys`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc, sessions
from modelhost.organization import Scope, admin_keys
from modelhost.protocol.admin import (
    AdminApiKey,
    AdminApiKeyCreated,
    AdminApiKeyCreateRequest,
    AdminApiKeyDeleted,
    AdminApiKeyList,
    AdminApiKeyListQuery,
)

router = APIRouter(
    prefix="/v1/organization/admin_api_keys",
    tags=["Admin API keys"],
    dependencies=[Depends(admin_principal)],
    responses=ERRORS,
)


@router.get("", response_model=AdminApiKeyList, openapi_extra=query_doc(AdminApiKeyListQuery))
def list_admin_api_keys(request: Request, scope: Scope = Depends(admin_scope)) -> AdminApiKeyList:
    return admin_keys.list_keys(sessions(request), scope, parse_query(request, AdminApiKeyListQuery))


@router.post("", response_model=AdminApiKeyCreated)
def create_admin_api_key(
    body: AdminApiKeyCreateRequest, request: Request, scope: Scope = Depends(admin_scope)
) -> AdminApiKeyCreated:
    return admin_keys.create(sessions(request), scope, body)


@router.get("/{key_id}", response_model=AdminApiKey)
def retrieve_admin_api_key(key_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> AdminApiKey:
    return admin_keys.get(sessions(request), scope, key_id)


@router.delete("/{key_id}", response_model=AdminApiKeyDeleted)
def delete_admin_api_key(key_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> AdminApiKeyDeleted:
    return admin_keys.delete(sessions(request), scope, key_id)
