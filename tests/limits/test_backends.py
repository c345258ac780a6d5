"""The limit-store contract, run against the in-process store and real Redis alike."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from modelhost.limits.base import Adjustment, Budget, Bucket, LimiterUnavailable, Lease
from modelhost.limits.memory import MemoryBackend
from modelhost.limits.redis_backend import RedisBackend

from .conftest import REDIS_URL, Store


def test_bucket_allows_its_capacity_then_refuses_until_refilled(store: Store) -> None:
    rpm = Bucket(store.key("rpm"), capacity=3, period=60, amount=1)

    async def body() -> None:
        for left in (2, 1, 0):
            outcome = await store.backend.acquire([rpm])
            assert outcome.allowed
            assert outcome.states[0].level == pytest.approx(left)
        refused = await store.backend.acquire([rpm])
        assert not refused.allowed
        assert refused.states[0].wait == pytest.approx(20.0)  # one request refills every 20 s
        assert refused.states[0].reset == pytest.approx(60.0)
        store.clock.advance(19.9)
        assert not (await store.backend.acquire([rpm])).allowed
        store.clock.advance(0.1)
        again = await store.backend.acquire([rpm])
        assert again.allowed
        assert again.states[0].reset == pytest.approx(60.0)

    store.run(body)


def test_no_burst_across_a_window_edge(store: Store) -> None:
    """A fixed one-minute window would allow 60 at 0:59.9 and 60 more at 1:00.1; a bucket cannot."""
    rpm = Bucket(store.key("rpm"), capacity=60, period=60, amount=1)

    async def body() -> None:
        store.clock.advance(59.9)
        taken = [store.clock.now for _ in range(60) if (await store.backend.acquire([rpm])).allowed]
        assert len(taken) == 60
        store.clock.advance(0.2)  # across the minute boundary
        assert not (await store.backend.acquire([rpm])).allowed
        # From here on, hammering every 50 ms: at most one request per second gets through, so
        # no 60-second window holds more than 60 + 60 (the first burst and a minute's refill).
        for _ in range(2400):
            store.clock.advance(0.05)
            if (await store.backend.acquire([rpm])).allowed:
                taken.append(store.clock.now)
        gaps = [b - a for a, b in zip(taken[60:], taken[61:])]
        assert min(gaps) == pytest.approx(1.0, abs=0.051)
        for i, start in enumerate(taken):
            in_window = sum(1 for t in taken[i:] if t < start + 60)
            assert in_window <= 61 + 60

    store.run(body)


def test_acquire_is_all_or_nothing(store: Store) -> None:
    rpm = Bucket(store.key("rpm"), capacity=10, period=60, amount=1)
    tpm = Bucket(store.key("tpm"), capacity=100, period=60, amount=80)
    budget = Budget(store.key("quota"), limit=1000, amount=80, ttl=3600)

    async def body() -> None:
        await store.backend.seed(budget.key, 0, budget.ttl)
        assert (await store.backend.acquire([rpm, tpm, budget])).allowed
        refused = await store.backend.acquire([rpm, tpm, budget])  # 80 more tokens do not fit
        assert not refused.allowed
        assert [s.allowed for s in refused.states] == [True, False, True]
        after = await store.backend.acquire([rpm, Bucket(tpm.key, 100, 60, 20), Budget(budget.key, 1000, 20, 3600)])
        assert after.allowed
        assert after.states[0].level == pytest.approx(8)  # the refused request took nothing
        assert after.states[1].level == pytest.approx(0)
        assert after.states[2].level == 100

    store.run(body)


def test_settle_gives_back_what_the_estimate_over_took(store: Store) -> None:
    tpm = Bucket(store.key("tpm"), capacity=100, period=60, amount=40)

    async def body() -> None:
        assert (await store.backend.acquire([tpm])).allowed
        await store.backend.settle([Adjustment(tpm, amount=30)])  # used 10 of the 40 estimated
        probe = await store.backend.acquire([Bucket(tpm.key, 100, 60, 90)])
        assert probe.allowed and probe.states[0].level == pytest.approx(0)
        await store.backend.settle([Adjustment(tpm, amount=500)])  # never above capacity
        probe = await store.backend.acquire([Bucket(tpm.key, 100, 60, 100)])
        assert probe.allowed
        assert not (await store.backend.acquire([Bucket(tpm.key, 100, 60, 1)])).allowed

    store.run(body)


def test_budget_is_missing_until_seeded_and_seed_never_overwrites(store: Store) -> None:
    budget = Budget(store.key("quota"), limit=100, amount=30, ttl=3600)

    async def body() -> None:
        first = await store.backend.acquire([budget])
        assert not first.allowed and first.missing == (budget.key,)
        await store.backend.seed(budget.key, 50, budget.ttl)
        ok = await store.backend.acquire([budget])
        assert ok.allowed and ok.states[0].level == 80 and ok.states[0].epoch
        await store.backend.seed(budget.key, 0, budget.ttl)  # exists: ignored
        refused = await store.backend.acquire([budget])
        assert not refused.allowed and refused.states[0].level == 80
        assert refused.states[0].epoch == ok.states[0].epoch  # the same counter, the same generation
        assert await store.backend.settle([Adjustment(budget, amount=-30, epoch=ok.states[0].epoch)]) == (50,)
        assert (await store.backend.acquire([budget])).allowed
        unlimited = Budget(budget.key, limit=None, amount=10**9, ttl=3600)
        assert (await store.backend.acquire([unlimited])).allowed  # counted, never refused

    store.run(body)


def test_budget_counter_expires_after_its_ttl(store: Store) -> None:
    budget = Budget(store.key("quota"), limit=100, amount=1, ttl=0.3)

    async def body() -> None:
        await store.backend.seed(budget.key, 99, budget.ttl)
        taken = await store.backend.acquire([budget])
        assert taken.allowed
        await asyncio.sleep(0.4)  # Redis expires keys on its own clock
        store.clock.advance(0.4)
        assert (await store.backend.acquire([budget])).missing == (budget.key,)
        assert await store.backend.settle([Adjustment(budget, amount=-1, epoch=taken.states[0].epoch)]) == (None,)

    store.run(body)


def test_a_settle_after_the_budget_was_re_seeded_adds_the_whole_cost(store: Store) -> None:
    """A counter rebuilt from the ledger while a request ran never held its reservation: settling
    that request there must add what it cost, not give back its unused estimate (issue #12, item 12)."""
    budget = Budget(store.key("quota"), limit=1000, amount=100, ttl=0.3)  # an estimate of 100

    async def body() -> None:
        await store.backend.seed(budget.key, 0, budget.ttl)
        before = await store.backend.acquire([budget])
        assert before.allowed and before.states[0].level == 100
        await asyncio.sleep(0.4)  # the counter is gone (as after a Redis that lost its data)
        store.clock.advance(0.4)
        await store.backend.seed(budget.key, 500, 3600)  # rebuilt: the ledger knows 500, not the request in flight
        after = await store.backend.acquire([Budget(budget.key, 1000, 7, 3600)])
        assert after.allowed and after.states[0].level == 507
        assert after.states[0].epoch != before.states[0].epoch  # another generation
        # The request used 30 of its 100: the new counter gets +30 (the bug gave it 30 - 100 = -70).
        assert await store.backend.settle([Adjustment(budget, amount=30 - 100, epoch=before.states[0].epoch)]) == (537,)
        # A request refused before it ran gives back nothing it never took there either.
        assert await store.backend.settle([Adjustment(budget, amount=-100, epoch=before.states[0].epoch)]) == (537,)
        # The request acquired from this generation settles as usual (7 estimated, 5 used).
        assert await store.backend.settle([Adjustment(Budget(budget.key, 1000, 7, 3600), -2, after.states[0].epoch)]) == (535,)

    store.run(body)


def test_lease_caps_concurrent_holders_and_expires(store: Store) -> None:
    def lease(member: str) -> Lease:
        return Lease(store.key("concurrent"), limit=2, member=member, ttl=600)

    async def body() -> None:
        assert (await store.backend.acquire([lease("a")])).allowed
        second = await store.backend.acquire([lease("b")])
        assert second.allowed and second.states[0].level == 2
        assert not (await store.backend.acquire([lease("c")])).allowed
        await store.backend.settle([Adjustment(lease("a"))])
        assert (await store.backend.acquire([lease("c")])).allowed
        store.clock.advance(601)  # holders that never released (a crashed replica) are forgotten
        assert (await store.backend.acquire([lease("d")])).states[0].level == 1

    store.run(body)


def test_fifty_concurrent_reservations_against_a_budget_that_fits_one(store: Store) -> None:
    budget = Budget(store.key("quota"), limit=40, amount=31, ttl=3600)

    async def body() -> None:
        await store.backend.seed(budget.key, 0, budget.ttl)
        peers = [store.peer() for _ in range(5)]  # several connections, as replicas would race
        try:
            outcomes = await asyncio.gather(*(peers[i % 5].acquire([budget]) for i in range(50)))
        finally:
            for peer in peers:
                if peer is not store.backend:
                    await peer.close()
        assert sum(o.allowed for o in outcomes) == 1
        epoch = next(o.states[0].epoch for o in outcomes if o.allowed)
        assert (await store.backend.settle([Adjustment(budget, amount=0, epoch=epoch)])) == (31,)

    store.run(body)


def test_fifty_threads_each_with_its_own_loop_reserve_at_most_the_budget(store: Store) -> None:
    budget = Budget(store.key("quota"), limit=40, amount=31, ttl=3600)
    store.run(lambda: store.backend.seed(budget.key, 0, budget.ttl))
    results: list[bool] = []
    start = threading.Barrier(50)

    def one() -> None:
        async def go() -> bool:
            handle = store.peer()
            try:
                start.wait()
                return (await handle.acquire([budget])).allowed
            finally:
                if handle is not store.backend:
                    await handle.close()

        results.append(asyncio.run(go()))

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 50
    assert sum(results) == 1


def test_a_redis_budget_counter_of_an_earlier_release_is_rebuilt_not_misread(store: Store) -> None:
    """Before generations a budget was a plain integer: read as missing (so the limiter rebuilds it
    from the ledger), never as a counter without a generation; an older replica still running gets
    a 503 on the rebuilt one (WRONGTYPE), never a wrong count."""
    if store.kind != "redis":
        pytest.skip("a Redis key format")
    budget = Budget(store.key("quota"), limit=100, amount=10, ttl=3600)
    client = redis.Redis.from_url(REDIS_URL)
    client.set(budget.key, 42, px=3_600_000)

    async def body() -> None:
        assert (await store.backend.acquire([budget])).missing == (budget.key,)
        await store.backend.seed(budget.key, 50, budget.ttl)
        taken = await store.backend.acquire([budget])
        assert taken.allowed and taken.states[0].level == 60
        assert 0 < client.pttl(budget.key) <= 3_600_000

    try:
        store.run(body)
        with pytest.raises(redis.ResponseError):  # what a replica of the earlier release would do
            client.incrby(budget.key, 1)
    finally:
        client.close()


def test_redis_that_does_not_answer_is_unavailable_not_allowed() -> None:
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def body() -> None:
        backend = RedisBackend(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(LimiterUnavailable):
                await backend.acquire([Bucket("k", 1, 60, 1)])
            with pytest.raises(LimiterUnavailable):
                await backend.seed("q", 0, 60)
            with pytest.raises(LimiterUnavailable):
                await backend.settle([Adjustment(Bucket("k", 1, 60, 1), 1)])
            assert time.monotonic() - started < 5
        finally:
            await backend.close()

    asyncio.run(body())


def test_memory_store_forgets_idle_counters() -> None:
    from .conftest import FakeClock

    clock = FakeClock()
    backend = MemoryBackend(clock=clock)

    async def body() -> None:
        await backend.acquire([Bucket("b", 10, 60, 5)])
        await backend.seed("q", 1, 10)
        for _ in range(999):
            clock.advance(0.1)
            await backend.acquire([])
        assert not backend._buckets and not backend._budgets

    asyncio.run(body())
