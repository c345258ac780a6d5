"""OpenAI's project rate-limit objects (`/v1/organization/projects/{id}/rate_limits`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import CursorList, Id, QueryModel
from modelhost.protocol.common import WireModel

Limit = Annotated[int, Field(ge=0, le=2**53, description="0 means no limit.")]


class ProjectRateLimit(BaseModel):
    """A project's effective limits for one model (its own, else its organization's, else the server's)."""

    object: Literal["project.rate_limit"] = "project.rate_limit"
    id: str
    model: str
    max_requests_per_1_minute: int
    max_tokens_per_1_minute: int
    max_requests_per_1_day: int
    batch_1_day_max_input_tokens: int  # input tokens the project's unfinished batches may hold enqueued


class ProjectRateLimitList(CursorList):
    data: list[ProjectRateLimit]


class ProjectRateLimitListQuery(QueryModel):
    limit: int = Field(100, ge=1, le=100, description="How many objects to return, 1 to 100.")
    after: Id | None = Field(None, description="Return the rate limits after this id (the previous page's last_id).")
    before: Id | None = Field(None, description="Return the rate limits before this id.")


class ProjectRateLimitUpdateRequest(WireModel):
    """The limits to change; images and audio limits are accepted and ignored (not served here)."""

    max_requests_per_1_minute: Limit | None = None
    max_tokens_per_1_minute: Limit | None = None
    max_requests_per_1_day: Limit | None = None
    max_images_per_1_minute: Limit | None = None
    max_audio_megabytes_per_1_minute: Limit | None = None
    batch_1_day_max_input_tokens: Limit | None = None
