"""`/v1/organization/projects` and `…/{project_id}/archive`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc, sessions
from modelhost.organization import Scope, projects
from modelhost.protocol.admin import Project, ProjectCreateRequest, ProjectList, ProjectListQuery, ProjectUpdateRequest

router = APIRouter(
    prefix="/v1/organization/projects", tags=["Projects"], dependencies=[Depends(admin_principal)], responses=ERRORS
)


@router.get("", response_model=ProjectList, openapi_extra=query_doc(ProjectListQuery))
def list_projects(request: Request, scope: Scope = Depends(admin_scope)) -> ProjectList:
    return projects.list_projects(sessions(request), scope, parse_query(request, ProjectListQuery))


@router.post("", response_model=Project)
def create_project(body: ProjectCreateRequest, request: Request, scope: Scope = Depends(admin_scope)) -> Project:
    return projects.create(sessions(request), scope, body)


@router.get("/{project_id}", response_model=Project)
def retrieve_project(project_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> Project:
    return projects.get(sessions(request), scope, project_id)


@router.post("/{project_id}", response_model=Project)
def modify_project(
    project_id: str, body: ProjectUpdateRequest, request: Request, scope: Scope = Depends(admin_scope)
) -> Project:
    return projects.update(sessions(request), scope, project_id, body)


@router.post("/{project_id}/archive", response_model=Project)
def archive_project(project_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> Project:
    return projects.archive(sessions(request), scope, project_id)
