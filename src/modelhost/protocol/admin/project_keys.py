"""A project's API keys (`/v1/organization/projects/{id}/api_keys`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import CursorList, Deleted, ListQuery, Omitted


class ProjectApiKeyListQuery(ListQuery):
    owner_project_access: Literal["active", "inactive", "any"] = Field(
        default="any", description="Only keys whose owner can (active) or cannot (inactive) use the project now."
    )


class ProjectApiKeyOwnerUser(BaseModel):
    id: str
    email: str
    name: str
    created_at: int
    role: str


class ProjectApiKeyOwnerServiceAccount(BaseModel):
    id: str
    name: str
    created_at: int
    role: str


class ProjectApiKeyOwner(BaseModel):
    type: Literal["user", "service_account"]
    user: ProjectApiKeyOwnerUser | None = Omitted("When `type` is user.")
    service_account: ProjectApiKeyOwnerServiceAccount | None = Omitted("When `type` is service_account.")


class ProjectApiKey(BaseModel):
    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    id: str
    name: str
    redacted_value: str
    created_at: int
    last_used_at: int | None
    owner_project_access: Literal["active", "inactive"]
    owner: ProjectApiKeyOwner


class ProjectApiKeyList(CursorList):
    data: list[ProjectApiKey]


class ProjectApiKeyDeleted(Deleted):
    object: Literal["organization.project.api_key.deleted"] = "organization.project.api_key.deleted"
