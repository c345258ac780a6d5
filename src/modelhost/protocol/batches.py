"""The Batch API's wire shapes, as OpenAI defines them (`CreateBatchRequest`, `Batch`, `ListBatchesResponse`).

`endpoint` and `completion_window` are plain strings here: the batches package checks them and
answers OpenAI's 400 naming the parameter (an endpoint of the spec's enum that this server does not
run, such as ``/v1/moderations``, is refused by name rather than by a schema error).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import CursorList
from modelhost.protocol.common import StoredStr, WireModel
from modelhost.protocol.responses import MAX_ID_LENGTH, Metadata

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
COMPLETION_WINDOWS = ("24h",)
MIN_OUTPUT_EXPIRY, MAX_OUTPUT_EXPIRY = 3600, 2_592_000  # 1 hour to 30 days, as the spec bounds them


class OutputExpiresAfter(WireModel):
    """When the output and error files expire: `seconds` after their own creation."""

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_OUTPUT_EXPIRY, le=MAX_OUTPUT_EXPIRY)


class CreateBatchRequest(WireModel):
    input_file_id: StoredStr = Field(max_length=MAX_ID_LENGTH)
    endpoint: StoredStr = Field(max_length=256)
    completion_window: StoredStr = Field(max_length=64)
    metadata: Metadata | None = None
    output_expires_after: OutputExpiresAfter | None = None


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None


class BatchList(CursorList):
    data: list[Batch]


class BatchListQuery(BaseModel):
    """`GET /v1/batches`'s query; unknown parameters are ignored."""

    after: StoredStr | None = Field(default=None, max_length=MAX_ID_LENGTH)
    limit: int = Field(default=20, ge=1, le=100)
