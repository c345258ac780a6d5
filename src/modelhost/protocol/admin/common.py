"""What every Administration API resource shares: field types, the list envelope, listing queries, deletions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelhost.protocol.common import StoredStr

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


# Each resource subclasses it with its own `data: list[...]`: a named class rather than a generic
# `CursorList[T]`, so the OpenAPI document keeps the schema names it has always had.
class CursorList(BaseModel):
    """OpenAI's list envelope: `after` the `last_id` gives the next page while `has_more`."""

    object: Literal["list"] = "list"
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class Deleted(BaseModel):
    """OpenAI's answer to a DELETE; each resource narrows `object` to its own `….deleted` literal."""

    object: str
    id: str
    deleted: bool = True


class QueryModel(BaseModel):
    """Query parameters of a listing; unknown ones are ignored, as unknown body fields are."""

    model_config = ConfigDict(extra="ignore")


class ListQuery(QueryModel):
    limit: int = Field(default=20, ge=1, le=100, description="How many objects to return, 1 to 100.")
    after: Id | None = Field(default=None, description="Return the objects after this id (the previous page's last_id).")
