"""What every administrative operation shares: its scope, one transaction, ids and timestamps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Principal
from modelhost.errors import InvalidRequest, NotFound
from modelhost.protocol.admin import CursorList
from modelhost.store.pages import UnknownCursor, slice_page
from modelhost.store.tenancy import TenancyConflict, as_utc

L = TypeVar("L", bound=CursorList)


@dataclass(frozen=True)
class Scope:
    """The organization an operation acts on, and who acts: an admin key, or None for the CLI."""

    organization_id: str
    principal: Principal | None = None

    @classmethod
    def of(cls, principal: Principal) -> Scope:
        return cls(principal.organization_id, principal)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One session that commits when the block ends without an error; store errors become API errors."""
    with sessions() as session:
        try:
            yield session
        except UnknownCursor as exc:
            raise _unknown_cursor(exc) from exc
        except TenancyConflict as exc:
            raise InvalidRequest(str(exc)) from exc
        except IntegrityError as exc:  # a concurrent request made the same change first
            raise InvalidRequest("The change conflicts with the current state; read it again and retry.") from exc
        try:
            session.commit()
        except IntegrityError as exc:
            raise InvalidRequest("The change conflicts with the current state; read it again and retry.") from exc


def unix(moment: datetime | None) -> int | None:
    """Unix seconds of a stored time (None stays None)."""
    aware = as_utc(moment)
    return None if aware is None else int(aware.timestamp())


def unix_now(moment: datetime) -> int:
    seconds = unix(moment)
    assert seconds is not None
    return seconds


def _unknown_cursor(exc: UnknownCursor) -> InvalidRequest:
    """The API's answer to an `after`/`before` id that is not in the listing."""
    return InvalidRequest(f"Invalid '{exc.param}': it names no object of this list.", param=exc.param, code="invalid_value")


def listing(cls: type[L], items: Sequence[Any], has_more: bool) -> L:
    """OpenAI's list envelope around one page of `items` (each has an `id`): the only place it is built."""
    return cls.model_validate(
        {
            "data": list(items),
            "has_more": has_more,
            "first_id": items[0].id if items else None,
            "last_id": items[-1].id if items else None,
        }
    )


def listed(cls: type[L], items: Sequence[Any], *, limit: int, after: str | None, before: str | None = None) -> L:
    """One page of a whole listing held in memory (`items`, in order, each with an `id`), in the envelope."""
    try:
        page = slice_page(items, lambda item: str(item.id), limit=limit, after=after, before=before)
    except UnknownCursor as exc:
        raise _unknown_cursor(exc) from exc
    return listing(cls, page.items, page.has_more)


def every_item(fetch: Callable[[str | None], CursorList]) -> list[Any]:
    """All items of a listing, page after page: ``fetch(after)`` answers the page after the id `after`."""
    items: list[Any] = []
    after = None
    while True:
        page = fetch(after)
        items += page.data  # type: ignore[attr-defined]  # every list model has its typed `data`
        if not page.has_more:
            return items
        after = page.last_id


def not_found(what: str, ident: str) -> NotFound:
    """The one answer for a missing id and for an id of another organization."""
    return NotFound(f"No {what} found with id '{ident[:128]}'.")
