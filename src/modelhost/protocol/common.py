"""Shared pieces of OpenAI's wire format."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError


def _invalid_unicode(exc: UnicodeEncodeError) -> PydanticCustomError:
    return PydanticCustomError(
        "invalid_unicode",
        "text must be valid Unicode, and this has an unpaired UTF-16 surrogate (\\u{code})",
        {"code": f"{ord(exc.object[exc.start]):04x}"},
    )


def stored_text(value: str) -> str:
    """`value`, if the store can keep it as sent on SQLite and PostgreSQL alike; else a pydantic error.

    PostgreSQL's text cannot hold U+0000 (SQLite's can), and neither store takes an unpaired
    surrogate (no UTF-8 form). A name, id or email holding either was a 500 on PostgreSQL when
    stored or looked up; refused here, it is the same 400 naming the field on both. Every other
    character, control characters included, is kept as sent.
    """
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "text that is stored cannot hold a NUL character (\\u0000)")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _invalid_unicode(exc) from None
    return value


# A string the server stores or looks records up by: a name, an id, an email, a model id. Used in
# request bodies (also nested and in lists) and query parameters; path parameters and CLI
# arguments go through `stored_text` too (`api/admin/deps.py`, `cli.py`).
StoredStr = Annotated[str, AfterValidator(stored_text)]


def _opaque(value: object) -> None:
    """`json.dumps`' fallback: nested wire models checked their own fields when they were validated."""
    return None


class WireModel(BaseModel):
    """A request body: unknown fields are kept (new SDKs send new fields) and reported as ignored.

    Every string in it is valid Unicode. JSON can spell an unpaired UTF-16 surrogate (``"\\ud800"``)
    and Python's parser accepts it, but it has no UTF-8 form: the tokenizer failed on it with a 500,
    and the store and the upstream clients encode text as UTF-8 too. So it is a 400 naming the field.
    Fields the server stores or looks records up by are `StoredStr`: no NUL character either.
    """

    model_config = ConfigDict(extra="allow")

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: object) -> object:
        if isinstance(value, str) and value.isascii() or value is None or isinstance(value, (int, float, BaseModel)):
            return value
        try:  # strings, and the strings (keys too) inside lists and dicts, at C speed
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, skipkeys=True, default=_opaque)
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _invalid_unicode(exc) from None
        return value

    def ignored_fields(self) -> list[str]:
        """The unknown fields' names, for an info log line: at most 20, each cut to 64 characters."""
        return sorted(name[:64] for name in (self.model_extra or {}))[:20]


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
