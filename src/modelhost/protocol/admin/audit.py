"""Audit logs (`/v1/organization/audit_logs`): the query and the events."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelhost.protocol.admin.common import CursorList, Id, IdList, ListQuery, Omitted, QueryModel, Unix


class EffectiveAt(QueryModel):
    gt: Unix | None = None
    gte: Unix | None = None
    lt: Unix | None = None
    lte: Unix | None = None


EventType = Annotated[str, Field(max_length=100, pattern=r"^[a-z_]+(\.[a-z_]+)*$")]


class AuditLogQuery(ListQuery):
    effective_at: EffectiveAt | None = Field(default=None, description="Unix-seconds bounds, e.g. effective_at[gte]=…")
    project_ids: IdList = Field(default_factory=list)
    event_types: Annotated[list[EventType], Field(max_length=100)] = Field(default_factory=list)
    actor_ids: IdList = Field(default_factory=list, description="User, service account or API key ids.")
    actor_emails: IdList = Field(default_factory=list)
    resource_ids: IdList = Field(default_factory=list)
    before: Id | None = Field(default=None, description="Return the events before this id (newer ones).")


class AuditLogUser(BaseModel):
    id: str
    email: str | None = Omitted("The user's email.")


class AuditLogServiceAccount(BaseModel):
    id: str


class AuditLogActorApiKey(BaseModel):
    id: str
    type: Literal["user", "service_account"]
    user: AuditLogUser | None = Omitted("When `type` is user.")
    service_account: AuditLogServiceAccount | None = Omitted("When `type` is service_account.")


class AuditLogActorSession(BaseModel):
    user: AuditLogUser
    ip_address: str | None = Omitted("Where the session came from.")


class AuditLogActor(BaseModel):
    type: Literal["session", "api_key"]
    session: AuditLogActorSession | None = Omitted("When `type` is session.")
    api_key: AuditLogActorApiKey | None = Omitted("When `type` is api_key.")


class AuditLogProject(BaseModel):
    id: str
    name: str | None = Omitted("The project's name when the event happened.")


class AuditLog(BaseModel):
    """One event. Its details sit under a key named like its type, e.g. ``"project.created": {…}``."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: str
    effective_at: int
    project: AuditLogProject | None = Omitted("The project the event concerns, if any.")
    actor: AuditLogActor | None = Field(default=None, description="Null for changes made with the `modelhost` CLI.")


class AuditLogList(CursorList):
    data: list[AuditLog]
