"""`/v1/organization/projects/{project_id}/model_permissions`: read, replace and delete a project's model list."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, sessions
from modelhost.api.deps import app_state
from modelhost.organization import Scope, model_permissions
from modelhost.protocol.admin import (
    ProjectModelPermissions,
    ProjectModelPermissionsDeleted,
    ProjectModelPermissionsUpdateRequest,
)

router = APIRouter(
    prefix="/v1/organization/projects/{project_id}/model_permissions",
    tags=["Projects"],
    dependencies=[Depends(admin_principal)],
    responses=ERRORS,
)


@router.get("", response_model=ProjectModelPermissions)
def retrieve_project_model_permissions(
    project_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectModelPermissions:
    return model_permissions.get(sessions(request), scope, project_id, app_state(request).registry)


@router.post("", response_model=ProjectModelPermissions)
def update_project_model_permissions(
    project_id: str, body: ProjectModelPermissionsUpdateRequest, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectModelPermissions:
    return model_permissions.update(sessions(request), scope, project_id, body, app_state(request).registry)


@router.delete("", response_model=ProjectModelPermissionsDeleted)
def delete_project_model_permissions(
    project_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectModelPermissionsDeleted:
    return model_permissions.delete(sessions(request), scope, project_id)
