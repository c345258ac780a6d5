"""The cursor rules of every listing: `store.pages` and the envelope in `organization.common`."""

from __future__ import annotations

import pytest

from modelhost.errors import InvalidRequest
from modelhost.organization.common import every_item, listed, listing
from modelhost.protocol.admin import Invite, InviteList
from modelhost.store.pages import UnknownCursor, slice_page

IDS = ["a", "b", "c", "d", "e"]


def _page(**cursor: object) -> tuple[list[str], bool]:
    page = slice_page(IDS, str, **cursor)  # type: ignore[arg-type]
    return page.items, page.has_more


def test_slice_page_walks_after_and_before_like_a_query_listing() -> None:
    assert _page(limit=2) == (["a", "b"], True)
    assert _page(limit=2, after="b") == (["c", "d"], True)
    assert _page(limit=2, after="d") == (["e"], False)
    assert _page(limit=5, before="c") == (["a", "b"], False)
    assert _page(limit=1, after="a", before="d") == (["b"], True)


def test_a_cursor_not_in_the_listing_is_named() -> None:
    with pytest.raises(UnknownCursor) as raised:
        slice_page(IDS, str, limit=2, before="zz")
    assert raised.value.param == "before"


def _invite(ident: str) -> Invite:
    return Invite(
        id=ident, email=f"{ident}@x.io", role="reader", status="pending", created_at=0, expires_at=None,
        accepted_at=None, projects=[],
    )


def test_the_envelope_names_the_first_and_last_ids() -> None:
    page = listing(InviteList, [_invite("a"), _invite("b")], True)
    assert (page.object, page.first_id, page.last_id, page.has_more) == ("list", "a", "b", True)
    assert listing(InviteList, [], False).model_dump()["first_id"] is None


def test_a_listing_in_memory_answers_an_unknown_cursor_as_the_api_does() -> None:
    everything = [_invite(i) for i in IDS]
    assert [i.id for i in listed(InviteList, everything, limit=2, after="c").data] == ["d", "e"]
    with pytest.raises(InvalidRequest) as raised:
        listed(InviteList, everything, limit=2, after="zz")
    assert raised.value.param == "after"


def test_every_item_follows_the_pages_to_the_end() -> None:
    everything = [_invite(i) for i in IDS]
    asked: list[str | None] = []

    def fetch(after: str | None) -> InviteList:
        asked.append(after)
        return listed(InviteList, everything, limit=2, after=after)

    assert [i.id for i in every_item(fetch)] == IDS
    assert asked == [None, "b", "d"]
