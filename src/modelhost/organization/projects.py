"""`/v1/organization/projects`: create, list, read, rename and archive an organization's projects."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from modelhost.errors import InvalidRequest
from modelhost.organization import audit
from modelhost.organization.common import Scope, listing, not_found, transaction, unix, unix_now
from modelhost.protocol.admin import Project, ProjectCreateRequest, ProjectList, ProjectListQuery, ProjectUpdateRequest
from modelhost.store import tenancy
from modelhost.store.schema import Project as StoredProject


def wire(project: StoredProject) -> Project:
    return Project(
        id=project.id,
        name=project.name,
        created_at=unix_now(project.created_at),
        archived_at=unix(project.archived_at),
        status="archived" if project.status == "archived" else "active",
    )


def find(session: Session, scope: Scope, project_id: str, *, active: bool = False) -> StoredProject:
    """The organization's project `project_id`; with `active`, refuse an archived one (it cannot change)."""
    project = tenancy.get_project(session, scope.organization_id, project_id)
    if project is None:
        raise not_found("project", project_id)
    if active and project.status != "active":
        raise InvalidRequest(f"Project {project.id} is archived; archived projects cannot be changed.")
    return project


def create(sessions: sessionmaker[Session], scope: Scope, body: ProjectCreateRequest) -> Project:
    with transaction(sessions) as session:
        project = tenancy.create_project(session, scope.organization_id, body.name)
        audit.record(
            session, scope, "project.created", project.id, {"data": {"name": body.name, "title": body.name}}, project=project
        )
        return wire(project)


def list_projects(sessions: sessionmaker[Session], scope: Scope, query: ProjectListQuery) -> ProjectList:
    with transaction(sessions) as session:
        page = tenancy.list_projects(
            session, scope.organization_id, include_archived=query.include_archived, limit=query.limit, after=query.after
        )
        return listing(ProjectList, [wire(p) for p in page.items], page.has_more)


def get(sessions: sessionmaker[Session], scope: Scope, project_id: str) -> Project:
    with transaction(sessions) as session:
        return wire(find(session, scope, project_id))


def update(sessions: sessionmaker[Session], scope: Scope, project_id: str, body: ProjectUpdateRequest) -> Project:
    with transaction(sessions) as session:
        project = find(session, scope, project_id, active=True)
        if body.name is not None and body.name != project.name:
            project.name = body.name
            audit.record(
                session, scope, "project.updated", project.id, {"changes_requested": {"title": body.name}}, project=project
            )
        return wire(project)


def archive(sessions: sessionmaker[Session], scope: Scope, project_id: str) -> Project:
    """Archive the project: its keys stop working; archiving twice changes nothing."""
    with transaction(sessions) as session:
        project = find(session, scope, project_id)
        if project.status != "archived":
            tenancy.archive_project(session, project.id)
            audit.record(session, scope, "project.archived", project.id, project=project)
        return wire(project)
