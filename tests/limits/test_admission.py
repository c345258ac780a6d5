"""`Limiter.admit`: a request is counted before its planning, once, on both stores (issue #12, item 7).

The server admits a request (its request from the RPM and RPD buckets, its key's concurrency
lease) before it renders, tokenizes or compiles anything, and reserves its tokens once it knows
them. A request that fails its planning has still been counted; one that runs is counted once;
the lease is freed exactly once however the request ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.limits import RateLimitExceeded
from modelhost.store import limits as stored

from .conftest import Store
from .test_limiter import World


def _org_concurrency(world: World, limit: int) -> None:
    with world.sessions() as session:
        stored.put_rate_limit(session, organization_id=world.org, scope="organization", scope_id=world.org,
                              model="*", values={"max_concurrent_requests": limit})
        session.commit()


def test_admission_and_reserve_count_one_request(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_requests_per_1_minute=3, max_requests_per_1_day=3, max_tokens_per_1_minute=1000)

    async def body() -> None:
        remaining = []
        for i in range(3):
            admission = await world.admit(f"r{i}")
            assert admission.headers["x-ratelimit-remaining-requests"] == str(2 - i)
            held = await world.limiter.reserve(admission, request_id=f"r{i}", prompt_tokens=10, max_tokens=5, n=1)
            remaining.append(held.headers["x-ratelimit-remaining-requests"])
            await world.limiter.abandon(admission)
            await world.limiter.settle(held, prompt_tokens=10, completion_tokens=5)
        assert remaining == ["2", "1", "0"]  # reserve took no request of its own
        with pytest.raises(RateLimitExceeded) as refused:
            await world.admit("r3")
        assert "Limit 3, Used 3, Requested 1" in refused.value.message

    store.run(body)


def test_a_request_that_fails_its_planning_still_counts(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_requests_per_1_minute=3)

    async def body() -> None:
        for i in range(3):  # admitted, then refused while planned (a 400): never reserved
            await world.limiter.abandon(await world.admit(f"bad{i}"))
        with pytest.raises(RateLimitExceeded) as refused:
            await world.admit("good")
        assert (refused.value.status, refused.value.code, refused.value.type) == (429, "rate_limit_exceeded", "requests")
        assert "on requests per min (RPM): Limit 3, Used 3, Requested 1" in refused.value.message

    store.run(body)


def test_a_refused_admission_takes_nothing(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_requests_per_1_minute=2)
    _org_concurrency(world, 1)

    async def body() -> None:
        planning = await world.admit("a")
        with pytest.raises(RateLimitExceeded) as refused:  # a plans: the key's one slot is taken
            await world.admit("b")
        assert "concurrent requests per key: Limit 1, Used 1" in refused.value.message
        await world.limiter.abandon(planning)
        again = await world.admit("c")
        assert again.headers["x-ratelimit-remaining-requests"] == "0"  # a and c; b took nothing
        await world.limiter.abandon(again)

    store.run(body)


def test_the_lease_is_freed_once_by_whoever_holds_it(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_tokens_per_1_minute=100)
    _org_concurrency(world, 1)

    async def body() -> None:
        admission = await world.admit("a")
        held = await world.limiter.reserve(admission, request_id="a", prompt_tokens=10, max_tokens=5, n=1)
        await world.limiter.abandon(admission)  # the reservation holds the lease now: this frees nothing
        with pytest.raises(RateLimitExceeded):
            await world.admit("b")
        await world.limiter.settle(held, prompt_tokens=10, completion_tokens=5)

        # A reservation refused on tokens leaves the lease with the admission, for `abandon`.
        too_large = await world.admit("big")
        with pytest.raises(RateLimitExceeded) as refused:
            await world.limiter.reserve(too_large, request_id="big", prompt_tokens=10, max_tokens=200, n=1)
        assert refused.value.type == "tokens"
        with pytest.raises(RateLimitExceeded):
            await world.admit("c")
        await world.limiter.abandon(too_large)
        await world.limiter.abandon(too_large)  # a second abandon is a no-op

        admission = await world.admit("d")
        with pytest.raises(RateLimitExceeded):
            await world.admit("e")
        await world.limiter.abandon(admission)

    store.run(body)
