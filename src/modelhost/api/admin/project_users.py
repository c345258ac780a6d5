"""`/v1/organization/projects/{project_id}/users`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc, sessions
from modelhost.organization import Scope, project_users
from modelhost.protocol.admin import (
    ListQuery,
    ProjectUser,
    ProjectUserCreateRequest,
    ProjectUserDeleted,
    ProjectUserList,
    ProjectUserUpdateRequest,
)

router = APIRouter(
    prefix="/v1/organization/projects/{project_id}/users",
    tags=["Projects"],
    dependencies=[Depends(admin_principal)],
    responses=ERRORS,
)


@router.get("", response_model=ProjectUserList, openapi_extra=query_doc(ListQuery))
def list_project_users(project_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> ProjectUserList:
    return project_users.list_users(sessions(request), scope, project_id, parse_query(request, ListQuery))


@router.post("", response_model=ProjectUser)
def create_project_user(
    project_id: str, body: ProjectUserCreateRequest, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectUser:
    return project_users.add(sessions(request), scope, project_id, body)


@router.get("/{user_id}", response_model=ProjectUser)
def retrieve_project_user(
    project_id: str, user_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectUser:
    return project_users.get(sessions(request), scope, project_id, user_id)


@router.post("/{user_id}", response_model=ProjectUser)
def modify_project_user(
    project_id: str, user_id: str, body: ProjectUserUpdateRequest, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectUser:
    return project_users.update(sessions(request), scope, project_id, user_id, body)


@router.delete("/{user_id}", response_model=ProjectUserDeleted)
def delete_project_user(
    project_id: str, user_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectUserDeleted:
    return project_users.delete(sessions(request), scope, project_id, user_id)
