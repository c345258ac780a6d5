"""`/v1/organization/projects/{id}/model_permissions`: a project's own model allow or deny list.

The operator's models file is the ceiling (its organization and project lists, docs/scaling.md):
a project's list narrows what the file lets the project use and never widens it. A project
without a list (a new one, or one whose list was deleted) may use what the file lets it use,
which for a new project is its organization's list. Model ids are stored canonical (an alias is
resolved when written); an id the operator does not let the project use is refused exactly like
an id that does not exist, so the list cannot be used to learn what other tenants are served.
Changes reach requests within the key cache time (`MODELHOST_KEY_CACHE_SECONDS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth.principal import ModelPolicy
from modelhost.errors import InvalidRequest
from modelhost.organization import audit, projects
from modelhost.organization.common import Scope, transaction
from modelhost.protocol.admin import (
    ProjectModelPermissions,
    ProjectModelPermissionsDeleted,
    ProjectModelPermissionsUpdateRequest,
)
from modelhost.store import model_permissions as stored
from modelhost.store.schema import Project


class OperatorModels(Protocol):
    """What the operator's models file lets a project use (`engine.ModelRegistry` answers it)."""

    def permitted(self, name: str, *, organization_id: str, project_id: str) -> str | None: ...

    def operator_allows(self, organization_id: str, project_id: str) -> list[str] | None: ...


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


class VisibleModels(Protocol):
    """The served models a caller may use (`engine.ModelRegistry.visible` answers it)."""

    def visible(self, caller: ProjectCaller) -> Sequence[_Identified]: ...


@dataclass(frozen=True)
class ProjectCaller:
    """A project as the model registry sees a caller: its organization, and its own model permissions."""

    organization_id: str
    project_id: str
    policy: ModelPolicy | None

    def may_use(self, model_id: str) -> bool:
        return self.policy is None or self.policy.allows(model_id)


def usable(session: Session, organization_id: str, project_id: str, models: VisibleModels) -> list[str]:
    """The ids of the models the project may use, as its keys' /v1/models lists them: the operator's
    lists narrowed by the project's own permissions (the same rule `ModelRegistry` applies to requests)."""
    row = stored.of_project(session, project_id)
    policy = None if row is None else ModelPolicy(row.mode, frozenset(row.model_ids))
    return [model.id for model in models.visible(ProjectCaller(organization_id, project_id, policy))]


def _inherited(models: OperatorModels, project: Project) -> ProjectModelPermissions:
    """The project's access without a list of its own: all the operator allows it, as a list if limited."""
    allowed = models.operator_allows(project.organization_id, project.id)
    if allowed is None:
        return ProjectModelPermissions(mode="deny_list", model_ids=[])
    return ProjectModelPermissions(mode="allow_list", model_ids=allowed)


def _canonical(models: OperatorModels, project: Project, names: Sequence[str]) -> list[str]:
    ids: list[str] = []
    for i, name in enumerate(names):
        found = models.permitted(name, organization_id=project.organization_id, project_id=project.id)
        if found is None:
            raise InvalidRequest(
                f"Invalid value for 'model_ids[{i}]': no model '{name[:256]}' is available to this project "
                "(GET /v1/models with one of its keys lists them).",
                param=f"model_ids[{i}]",
                code="invalid_value",
            )
        if found not in ids:
            ids.append(found)
    return ids


def get(sessions: sessionmaker[Session], scope: Scope, project_id: str, models: OperatorModels) -> ProjectModelPermissions:
    """The project's list, or (without one) what it inherits."""
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id)
        row = stored.of_project(session, project.id)
        if row is None:
            return _inherited(models, project)
        return ProjectModelPermissions.model_validate({"mode": row.mode, "model_ids": row.model_ids})


def update(
    sessions: sessionmaker[Session],
    scope: Scope,
    project_id: str,
    body: ProjectModelPermissionsUpdateRequest,
    models: OperatorModels,
) -> ProjectModelPermissions:
    """Replace the project's list; every id must be one the operator lets the project use."""
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id, active=True)
        ids = _canonical(models, project, body.model_ids)
        stored.put(session, project, body.mode, ids)
        changes = {"model_permissions": {"mode": body.mode, "model_ids": ids}}
        audit.record(session, scope, "project.updated", project.id, {"changes_requested": changes}, project=project)
        return ProjectModelPermissions(mode=body.mode, model_ids=ids)


def delete(sessions: sessionmaker[Session], scope: Scope, project_id: str) -> ProjectModelPermissionsDeleted:
    """Drop the project's list: it may use what it inherits again. `deleted` is false when it had none."""
    with transaction(sessions) as session:
        project = projects.find(session, scope, project_id, active=True)
        deleted = stored.remove(session, project.id)
        if deleted:
            changes: dict[str, object] = {"model_permissions": None}
            audit.record(session, scope, "project.updated", project.id, {"changes_requested": changes}, project=project)
        return ProjectModelPermissionsDeleted(deleted=deleted)
