"""Shared pieces of OpenAI's wire format."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """A request body: unknown fields are kept (new SDKs send new fields) and reported as ignored."""

    model_config = ConfigDict(extra="allow")

    def ignored_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class Engine(BaseModel):
    """The deprecated `/v1/engines` object that openai<1.0 clients still list."""

    id: str
    object: Literal["engine"] = "engine"
    created: int | None = None
    owner: str
    ready: bool = True


class EngineList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Engine]
