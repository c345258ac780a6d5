"""A project's users (`/v1/organization/projects/{id}/users`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from modelhost.protocol.admin.common import CursorList, Deleted, Email, Id
from modelhost.protocol.common import WireModel


class ProjectUser(BaseModel):
    object: Literal["organization.project.user"] = "organization.project.user"
    id: str
    name: str | None
    email: str | None
    role: Literal["owner", "member"]
    added_at: int


class ProjectUserList(CursorList):
    data: list[ProjectUser]


class ProjectUserCreateRequest(WireModel):
    user_id: Id | None = None
    email: Email | None = None
    role: Literal["owner", "member"]


class ProjectUserUpdateRequest(WireModel):
    role: Literal["owner", "member"]


class ProjectUserDeleted(Deleted):
    object: Literal["organization.project.user.deleted"] = "organization.project.user.deleted"
