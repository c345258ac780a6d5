"""The Administration and Usage APIs' wire shapes, as OpenAI defines them (`/v1/organization/…`).

Objects, list envelopes, request bodies, and the query parameters of each listing. Absent
optional objects (an audit event's `project`, the other owner kind of a key) are left out of the
JSON rather than sent as null, because the spec does not allow null there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import StrictBool, BaseModel, ConfigDict, Field

from modelhost.protocol.common import StoredStr, WireModel

# Every string a client sends here is stored or looked up: `StoredStr` (no NUL, valid Unicode).
Name = Annotated[StoredStr, Field(min_length=1, max_length=256)]
# No white space or control characters (invites stripped what Python counts as space, \x1c-\x1f too).
Email = Annotated[StoredStr, Field(min_length=3, max_length=320, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")]
Id = Annotated[StoredStr, Field(min_length=1, max_length=128)]
ModelId = Annotated[StoredStr, Field(min_length=1, max_length=256)]
IdList = Annotated[list[Id], Field(max_length=100)]
UNIX_MAX = 253402300798  # 9999-12-31 less a second, so any bound + 1 s is still a date
Unix = Annotated[int, Field(ge=0, le=UNIX_MAX)]


def _absent_when_none(value: object) -> bool:
    return value is None


def Omitted(description: str) -> Any:  # noqa: N802 - a Field factory, read like a type
    """A field that is left out of the JSON when it is None."""
    return Field(default=None, exclude_if=_absent_when_none, description=description)


class CursorList(BaseModel):
    """OpenAI's list envelope: `after` the `last_id` gives the next page while `has_more`."""

    object: Literal["list"] = "list"
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# -- query parameters ---------------------------------------------------------------------------
class QueryModel(BaseModel):
    """Query parameters of a listing; unknown ones are ignored, as unknown body fields are."""

    model_config = ConfigDict(extra="ignore")


class ListQuery(QueryModel):
    limit: int = Field(default=20, ge=1, le=100, description="How many objects to return, 1 to 100.")
    after: Id | None = Field(default=None, description="Return the objects after this id (the previous page's last_id).")


class AdminApiKeyListQuery(ListQuery):
    order: Literal["asc", "desc"] = Field(default="asc", description="By creation time.")


class ProjectListQuery(ListQuery):
    include_archived: bool = Field(default=False, description="Also list archived projects.")


class UserListQuery(ListQuery):
    emails: IdList = Field(default_factory=list, description="Only users with these emails.")


class ProjectApiKeyListQuery(ListQuery):
    owner_project_access: Literal["active", "inactive", "any"] = Field(
        default="any", description="Only keys whose owner can (active) or cannot (inactive) use the project now."
    )


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


class _UsageQueryBase(QueryModel):
    start_time: Unix = Field(description="Start of the range, Unix seconds, inclusive.")
    end_time: Unix | None = Field(
        default=None, description="End of the range, Unix seconds, exclusive (default: the end of the current second)."
    )
    project_ids: IdList = Field(default_factory=list)
    api_key_ids: IdList = Field(default_factory=list)
    limit: int | None = Field(default=None, description="Buckets per page; the default and maximum depend on bucket_width.")
    page: Annotated[StoredStr, Field(max_length=128)] | None = Field(default=None, description="The previous page's next_page.")


class CompletionsUsageQuery(_UsageQueryBase):
    bucket_width: Literal["1m", "1h", "1d"] = "1d"
    user_ids: IdList = Field(default_factory=list)
    models: IdList = Field(default_factory=list)
    batch: bool | None = Field(default=None, description="Only batch (true) or only non-batch (false) requests.")
    group_by: list[Literal["project_id", "user_id", "api_key_id", "model", "batch", "service_tier"]] = Field(
        default_factory=list, max_length=6
    )


class EmbeddingsUsageQuery(_UsageQueryBase):
    bucket_width: Literal["1m", "1h", "1d"] = "1d"
    user_ids: IdList = Field(default_factory=list)
    models: IdList = Field(default_factory=list)
    group_by: list[Literal["project_id", "user_id", "api_key_id", "model"]] = Field(default_factory=list, max_length=4)


class CostsQuery(_UsageQueryBase):
    bucket_width: Literal["1d"] = "1d"
    group_by: list[Literal["project_id", "user_id", "line_item", "api_key_id"]] = Field(
        default_factory=list, max_length=4
    )


# -- admin API keys -----------------------------------------------------------------------------
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


class AdminApiKeyDeleted(BaseModel):
    object: Literal["organization.admin_api_key.deleted"] = "organization.admin_api_key.deleted"
    id: str
    deleted: bool = True


# -- organization users and invites ------------------------------------------------------------
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


class UserDeleted(BaseModel):
    object: Literal["organization.user.deleted"] = "organization.user.deleted"
    id: str
    deleted: bool = True


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


class InviteDeleted(BaseModel):
    object: Literal["organization.invite.deleted"] = "organization.invite.deleted"
    id: str
    deleted: bool = True


# -- projects ------------------------------------------------------------------------------------
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


class ProjectUserDeleted(BaseModel):
    object: Literal["organization.project.user.deleted"] = "organization.project.user.deleted"
    id: str
    deleted: bool = True


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


class ServiceAccountDeleted(BaseModel):
    object: Literal["organization.project.service_account.deleted"] = "organization.project.service_account.deleted"
    id: str
    deleted: bool = True


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


class ProjectApiKeyDeleted(BaseModel):
    object: Literal["organization.project.api_key.deleted"] = "organization.project.api_key.deleted"
    id: str
    deleted: bool = True


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


# -- usage and costs -------------------------------------------------------------------------------
class UsageCompletionsResult(BaseModel):
    object: Literal["organization.usage.completions.result"] = "organization.usage.completions.result"
    input_tokens: int
    output_tokens: int
    input_cached_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    num_model_requests: int
    project_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None
    batch: bool | None = None
    service_tier: str | None = None


class UsageEmbeddingsResult(BaseModel):
    object: Literal["organization.usage.embeddings.result"] = "organization.usage.embeddings.result"
    input_tokens: int
    num_model_requests: int
    project_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None


class CostAmount(BaseModel):
    value: float
    currency: str = "usd"


class CostsResult(BaseModel):
    object: Literal["organization.costs.result"] = "organization.costs.result"
    amount: CostAmount
    line_item: str | None = None
    project_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    quantity: float | None = None
    quantity_unit: Literal["tokens"] | None = None


UsageResult = Annotated[
    Union[UsageCompletionsResult, UsageEmbeddingsResult, CostsResult], Field(discriminator="object")
]


class UsageBucket(BaseModel):
    object: Literal["bucket"] = "bucket"
    start_time: int
    end_time: int
    results: list[UsageResult]


class UsagePage(BaseModel):
    object: Literal["page"] = "page"
    data: list[UsageBucket]
    has_more: bool
    next_page: str | None


# -- audit logs ----------------------------------------------------------------------------------
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
