"""Projects (`/v1/organization/projects`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import CursorList, ListQuery, Name
from modelhost.protocol.common import WireModel


class ProjectListQuery(ListQuery):
    include_archived: bool = Field(default=False, description="Also list archived projects.")


class Project(BaseModel):
    id: str
    object: Literal["organization.project"] = "organization.project"
    name: str
    created_at: int
    archived_at: int | None
    status: Literal["active", "archived"]


class ProjectList(CursorList):
    data: list[Project]


class ProjectCreateRequest(WireModel):
    name: Name


class ProjectUpdateRequest(WireModel):
    name: Name | None = None
