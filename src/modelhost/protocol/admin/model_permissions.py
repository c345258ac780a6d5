"""A project's model permissions (`/v1/organization/projects/{id}/model_permissions`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import ModelId
from modelhost.protocol.common import WireModel


class ProjectModelPermissions(BaseModel):
    """The project's model allow list or deny list (inside what the operator's models file allows)."""

    object: Literal["project.model_permissions"] = "project.model_permissions"
    mode: Literal["allow_list", "deny_list"]
    model_ids: list[str]


class ProjectModelPermissionsUpdateRequest(WireModel):
    mode: Literal["allow_list", "deny_list"]
    model_ids: Annotated[list[ModelId], Field(max_length=4096)]


class ProjectModelPermissionsDeleted(BaseModel):
    object: Literal["project.model_permissions.deleted"] = "project.model_permissions.deleted"
    deleted: bool
