"""Invites to the organization (`/v1/organization/invites`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import CursorList, Deleted, Email, Id
from modelhost.protocol.common import WireModel


class InviteProject(BaseModel):
    id: Id
    role: Literal["member", "owner"]


class InviteRequest(WireModel):
    email: Email
    role: Literal["reader", "owner"]
    projects: list[InviteProject] = Field(default_factory=list, max_length=100)


class Invite(BaseModel):
    object: Literal["organization.invite"] = "organization.invite"
    id: str
    email: str
    role: Literal["owner", "reader"]
    status: Literal["accepted", "expired", "pending"]
    created_at: int
    expires_at: int | None
    accepted_at: int | None
    projects: list[InviteProject]


class InviteList(CursorList):
    data: list[Invite]


class InviteDeleted(Deleted):
    object: Literal["organization.invite.deleted"] = "organization.invite.deleted"
