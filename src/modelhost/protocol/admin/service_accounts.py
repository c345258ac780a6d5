"""A project's service accounts (`/v1/organization/projects/{id}/service_accounts`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictBool

from modelhost.protocol.admin.common import CursorList, Deleted, Name
from modelhost.protocol.common import WireModel


class ProjectServiceAccount(BaseModel):
    object: Literal["organization.project.service_account"] = "organization.project.service_account"
    id: str
    name: str
    role: Literal["owner", "member", "none"]
    created_at: int


class ProjectServiceAccountList(CursorList):
    data: list[ProjectServiceAccount]


class ServiceAccountCreateRequest(WireModel):
    name: Name
    create_service_account_only: StrictBool | None = Field(default=None, description="Create it without an API key.")


class ServiceAccountApiKey(BaseModel):
    object: Literal["organization.project.service_account.api_key"] = "organization.project.service_account.api_key"
    value: str = Field(description="The secret; shown only in this response.")
    name: str
    created_at: int
    id: str


class ServiceAccountCreated(BaseModel):
    object: Literal["organization.project.service_account"] = "organization.project.service_account"
    id: str
    name: str
    role: Literal["member", "none"]
    created_at: int
    api_key: ServiceAccountApiKey | None


class ServiceAccountDeleted(Deleted):
    object: Literal["organization.project.service_account.deleted"] = "organization.project.service_account.deleted"
