"""The Usage and Costs APIs (`/v1/organization/usage/…`, `/v1/organization/costs`): queries and buckets."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import IdList, QueryModel, Unix
from modelhost.protocol.common import StoredStr


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


# The results repeat their group-by fields rather than inherit them: a base class would move those
# fields ahead of the counts and so change the order of the keys in the JSON clients see.
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
