"""Cursor pagination as OpenAI lists do it: `after`/`before` name an object id, never an offset.

The one home of the cursor rules: `keyset_page` pages a query, `slice_page` a list already in
memory (a project's rate limits, one per model); both answer a `Page` and raise `UnknownCursor`
for an id that is not in the listing. `organization.common.listing` wraps a page in OpenAI's list
envelope. (The usage API's `page` tokens are another thing: they name a time bucket, not an object.)

A query listing is ordered by (creation time, id); the cursor object's own position is looked up
within the same query, so a cursor from another organization is simply not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


class UnknownCursor(Exception):
    """The `after`/`before` id is not an object of this listing."""

    def __init__(self, param: str) -> None:
        super().__init__(param)
        self.param = param


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, in listing order; `has_more` says whether the cursor direction goes on."""

    items: list[T]
    has_more: bool


def keyset_page(
    session: Session,
    query: Select,  # type: ignore[type-arg]  # of any row shape
    *,
    created: ColumnElement[Any] | InstrumentedAttribute[Any],
    ident: ColumnElement[Any] | InstrumentedAttribute[Any],
    limit: int,
    after: str | None = None,
    before: str | None = None,
    descending: bool = False,
    scalars: bool = True,
) -> Page[Any]:
    """Rows of `query` ordered by (`created`, `ident`), up to `limit`, after or before a cursor id.

    ``keyset_page(s, select(Project).where(...), created=Project.created_at, ident=Project.id,
    limit=20, after="proj_abc")`` gives the 20 projects that follow ``proj_abc``.
    """
    assert limit > 0, "limit is validated by the caller"
    assert not (after and before), "give after or before, not both"
    cursor, param = (after, "after") if after else (before, "before")
    backwards = bool(before)  # walk against the listing order, then turn the page around
    newest_first = descending != backwards
    if cursor:
        anchor = session.execute(
            query.with_only_columns(created, ident, maintain_column_froms=True).where(ident == cursor).limit(1)
        ).first()
        if anchor is None:
            raise UnknownCursor(param)
        at, key = anchor
        if newest_first:
            query = query.where(or_(created < at, and_(created == at, ident < key)))
        else:
            query = query.where(or_(created > at, and_(created == at, ident > key)))
    order = (created.desc(), ident.desc()) if newest_first else (created.asc(), ident.asc())
    query = query.order_by(*order).limit(limit + 1)
    rows = list(session.scalars(query)) if scalars else list(session.execute(query).all())
    has_more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    return Page(rows, has_more)


def slice_page(
    items: Sequence[T],
    ident: Callable[[T], str],
    *,
    limit: int,
    after: str | None = None,
    before: str | None = None,
) -> Page[T]:
    """Up to `limit` of `items` (already in listing order) after and/or before the items named by id.

    ``slice_page(limits, lambda r: r["id"], limit=2, after="rl-a")`` gives the two that follow ``rl-a``.
    """
    assert limit > 0, "limit is validated by the caller"
    ids = [ident(item) for item in items]
    for cursor, param in ((after, "after"), (before, "before")):
        if cursor is not None and cursor not in ids:
            raise UnknownCursor(param)
    start = ids.index(after) + 1 if after is not None else 0
    end = ids.index(before) if before is not None else len(items)
    page = list(items[start:end][:limit])
    return Page(page, start + len(page) < end)
