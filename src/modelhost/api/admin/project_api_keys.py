"""`/v1/organization/projects/{project_id}/api_keys`: list, read, delete (keys are created by users)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc, sessions
from modelhost.organization import Scope, project_keys
from modelhost.protocol.admin import ProjectApiKey, ProjectApiKeyDeleted, ProjectApiKeyList, ProjectApiKeyListQuery

router = APIRouter(
    prefix="/v1/organization/projects/{project_id}/api_keys",
    tags=["Projects"],
    dependencies=[Depends(admin_principal)],
    responses=ERRORS,
)


@router.get("", response_model=ProjectApiKeyList, openapi_extra=query_doc(ProjectApiKeyListQuery))
def list_project_api_keys(project_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> ProjectApiKeyList:
    return project_keys.list_keys(sessions(request), scope, project_id, parse_query(request, ProjectApiKeyListQuery))


@router.get("/{api_key_id}", response_model=ProjectApiKey)
def retrieve_project_api_key(
    project_id: str, api_key_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectApiKey:
    return project_keys.get(sessions(request), scope, project_id, api_key_id)


@router.delete("/{api_key_id}", response_model=ProjectApiKeyDeleted)
def delete_project_api_key(
    project_id: str, api_key_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectApiKeyDeleted:
    return project_keys.delete(sessions(request), scope, project_id, api_key_id)
