"""Admin API keys (`/v1/organization/admin_api_keys`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import CursorList, Deleted, ListQuery, Name
from modelhost.protocol.common import WireModel


class AdminApiKeyListQuery(ListQuery):
    order: Literal["asc", "desc"] = Field(default="asc", description="By creation time.")


class AdminApiKeyOwner(BaseModel):
    type: Literal["user"] = "user"
    object: Literal["organization.user"] = "organization.user"
    id: str
    name: str
    created_at: int
    role: str


class AdminApiKey(BaseModel):
    object: Literal["organization.admin_api_key"] = "organization.admin_api_key"
    id: str
    name: str | None
    redacted_value: str
    created_at: int
    expires_at: int | None
    last_used_at: int | None
    owner: AdminApiKeyOwner


class AdminApiKeyCreated(AdminApiKey):
    value: str = Field(description="The secret; shown only in this response.")


class AdminApiKeyList(CursorList):
    data: list[AdminApiKey]


class AdminApiKeyCreateRequest(WireModel):
    name: Name
    expires_in_seconds: int | None = Field(default=None, ge=1, le=31536000)


class AdminApiKeyDeleted(Deleted):
    object: Literal["organization.admin_api_key.deleted"] = "organization.admin_api_key.deleted"
