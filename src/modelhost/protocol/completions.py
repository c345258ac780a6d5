"""`POST /v1/completions` (legacy): request and response shapes as OpenAI defines them."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, field_validator

from modelhost.protocol.chat import (
    LogitBias,
    Seed,
    Stop,
    StreamOptions,
)
from modelhost.protocol.common import Usage, WireModel

MAX_PROMPTS = 64

# A string, strings, token ids or lists of token ids; a list is never empty (nothing to complete).
Prompt = Union[
    str,
    Annotated[list[str], Field(min_length=1)],
    Annotated[list[int], Field(min_length=1)],
    Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)],
]


class CompletionRequest(WireModel):
    model: str
    prompt: Prompt = Field(default="<|endoftext|>")
    suffix: str | None = None
    max_tokens: int | None = Field(default=16, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    best_of: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = None
    stop: Stop = None
    seed: Seed | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: LogitBias = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _bounded_prompts(cls, value: Prompt) -> Prompt:
        if isinstance(value, list) and value and not isinstance(value[0], int) and len(value) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        if isinstance(value, list) and not value:
            raise ValueError("the prompt list is empty")
        return value


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length", "content_filter"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
