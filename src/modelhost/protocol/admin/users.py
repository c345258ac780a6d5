"""Organization users (`/v1/organization/users`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import CursorList, Deleted, IdList, ListQuery
from modelhost.protocol.common import WireModel


class UserListQuery(ListQuery):
    emails: IdList = Field(default_factory=list, description="Only users with these emails.")


class OrganizationUser(BaseModel):
    object: Literal["organization.user"] = "organization.user"
    id: str
    name: str | None
    email: str | None
    role: Literal["owner", "reader"]
    added_at: int


class OrganizationUserList(CursorList):
    data: list[OrganizationUser]


class UserRoleUpdateRequest(WireModel):
    role: Literal["owner", "reader"]


class UserDeleted(Deleted):
    object: Literal["organization.user.deleted"] = "organization.user.deleted"
