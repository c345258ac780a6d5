"""`Limiter`: admit before planning, reserve before generation, settle after, with OpenAI's errors
and headers, on both stores."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis

from modelhost.auth import Principal
from modelhost.config import ModelPrice
from modelhost.limits import (
    Admission,
    AppliedLimits,
    LimitPolicy,
    Limiter,
    LimitsUnavailable,
    QuotaExceeded,
    RateLimitExceeded,
    RateLimits,
    Reservation,
)
from modelhost.limits.base import LimitBackend
from modelhost.limits.memory import MemoryBackend
from modelhost.limits.redis_backend import RedisBackend
from modelhost.store import UsageEntry, UsageLedger, migrate, open_engine, session_factory
from modelhost.store import limits as stored
from modelhost.store import tenancy

from .conftest import FakeClock, Store, private_redis

MODEL = "m"
NO_LIMITS = RateLimits(0, 0, 0, 0)


class World:
    """A migrated SQLite store with one organization, its project, a ledger and a limiter over `store`."""

    def __init__(self, tmp_path: Path, store: Store, prices: dict[str, ModelPrice] | None = None) -> None:
        engine = open_engine(f"sqlite:///{tmp_path / 'limits.db'}")
        migrate(engine)
        self.sessions = session_factory(engine)
        with self.sessions() as session:
            org = tenancy.create_organization(session, "Limits")
            session.commit()
            project = tenancy.default_project(session, org.id)
            assert project is not None
            self.org, self.project = org.id, project.id
        self.who = Principal(self.org, self.project, "user-1", "key_1", "project")
        self.ledger = UsageLedger(self.sessions)
        self.limiter = Limiter(
            store.backend,
            LimitPolicy(self.sessions, NO_LIMITS, cache_seconds=0),
            self.ledger,
            prices=prices or {},
            key_prefix=store.prefix.rstrip(":"),
        )

    def limits(self, **values: int | None) -> None:
        with self.sessions() as session:
            stored.put_rate_limit(
                session, organization_id=self.org, scope="project", scope_id=self.project, model=MODEL, values=values
            )
            session.commit()

    def quota(self, unit: str = "tokens", hard: int | None = None, soft: int | None = None, scope: str = "project") -> None:
        with self.sessions() as session:
            scope_id = self.project if scope == "project" else self.org
            stored.put_quota(
                session, organization_id=self.org, scope=scope, scope_id=scope_id, unit=unit, period="month",
                hard_limit=hard, soft_limit=soft,
            )
            session.commit()

    def spent(self, prompt: int, completion: int, request_id: str = "earlier") -> None:
        self.ledger.record(
            UsageEntry(request_id, datetime.now(timezone.utc), self.org, self.project, "user-1", "key_1", MODEL,
                       "chat.completions", prompt, completion, "completed")
        )

    async def admit(self, request_id: str = "r", who: Principal | None = None) -> Admission:
        return await self.limiter.admit(who or self.who, model=MODEL, request_id=request_id)

    async def reserve(
        self, prompt: int = 10, max_tokens: int = 5, n: int = 1, request_id: str = "r", who: Principal | None = None
    ) -> Reservation:
        """Admit and reserve one request, as the server does around its planning."""
        admission = await self.admit(request_id, who)
        try:
            return await self.limiter.reserve(
                admission, request_id=request_id, prompt_tokens=prompt, max_tokens=max_tokens, n=n
            )
        finally:
            await self.limiter.abandon(admission)


def test_reserve_takes_the_estimate_and_settle_corrects_it(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_tokens_per_1_minute=1000, max_requests_per_1_minute=100)

    async def body() -> None:
        first = await world.reserve(prompt=10, max_tokens=100, n=2)  # 10 + 100 × 2
        assert first.headers["x-ratelimit-limit-tokens"] == "1000"
        assert first.headers["x-ratelimit-remaining-tokens"] == "790"
        assert first.headers["x-ratelimit-limit-requests"] == "100"
        assert first.headers["x-ratelimit-remaining-requests"] == "99"
        assert re.fullmatch(r"\d+(\.\d+)?(ms|s)", first.headers["x-ratelimit-reset-tokens"])
        await world.limiter.settle(first, prompt_tokens=10, completion_tokens=5)  # 15 used, not 210
        second = await world.reserve(prompt=10, max_tokens=0)
        assert second.headers["x-ratelimit-remaining-tokens"] == "975"  # 1000 − 15 − 10

    store.run(body)


def test_over_the_request_rate_is_a_429_shaped_like_openais(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_requests_per_1_minute=3)

    async def body() -> None:
        for i in range(3):
            await world.reserve(request_id=f"r{i}")
        with pytest.raises(RateLimitExceeded) as refused:
            await world.reserve(request_id="r3")
        error = refused.value
        assert (error.status, error.type, error.code) == (429, "requests", "rate_limit_exceeded")
        assert re.fullmatch(
            rf"Rate limit reached for {MODEL} in organization {world.org} on requests per min \(RPM\): "
            r"Limit 3, Used 3, Requested 1\. Please try again in (19\.\d+|20)s\.",
            error.message,
        ), error.message
        assert error.headers["retry-after"] == "20"
        assert 19_000 < int(error.headers["retry-after-ms"]) <= 20_000
        assert error.headers["x-ratelimit-remaining-requests"] == "0"
        assert "x-should-retry" not in error.headers

    store.run(body)


def test_later_prompts_of_one_request_take_tokens_but_not_requests(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_requests_per_1_minute=2, max_tokens_per_1_minute=1000, max_concurrent_requests=1)

    async def body() -> None:
        admission = await world.admit("r")
        first = await world.limiter.reserve(admission, request_id="r-0", prompt_tokens=10, max_tokens=5, n=1)
        later = await world.limiter.reserve(admission, request_id="r-1", prompt_tokens=10, max_tokens=5, n=1)
        assert later.headers["x-ratelimit-remaining-requests"] == "1"  # still only r counted
        assert later.headers["x-ratelimit-remaining-tokens"] == "970"
        with pytest.raises(RateLimitExceeded) as refused:  # the key's one concurrent request is r
            await world.reserve(request_id="other")
        assert "concurrent requests per key: Limit 1, Used 1" in refused.value.message
        await world.limiter.release(later)
        await world.limiter.release(first)

    store.run(body)


def test_a_request_larger_than_the_token_limit_is_refused_for_good(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_tokens_per_1_minute=100)

    async def body() -> None:
        with pytest.raises(RateLimitExceeded) as refused:
            await world.reserve(prompt=20, max_tokens=50, n=2)
        assert refused.value.type == "tokens"
        assert "Limit 100, Requested 120" in refused.value.message
        assert refused.value.headers["x-should-retry"] == "false"
        await world.reserve(prompt=20, max_tokens=40, n=2)  # 100 fits exactly

    store.run(body)


def test_token_rate_refusal_names_tokens(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_tokens_per_1_minute=100)

    async def body() -> None:
        await world.reserve(prompt=50, max_tokens=30)
        with pytest.raises(RateLimitExceeded) as refused:
            await world.reserve(prompt=50, max_tokens=30)
        assert refused.value.type == "tokens"
        assert "on tokens per min (TPM): Limit 100, Used 80, Requested 80. Please try again in 36s." in refused.value.message

    store.run(body)


def test_quota_starts_from_the_ledger_and_refuses_past_its_hard_limit(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.spent(60, 40)  # 100 tokens already spent this month
    world.quota(hard=120)

    async def body() -> None:
        with pytest.raises(QuotaExceeded) as refused:
            await world.reserve(prompt=10, max_tokens=11)  # 100 + 21 > 120
        error = refused.value
        assert (error.status, error.type, error.code) == (429, "insufficient_quota", "insufficient_quota")
        assert error.headers["x-should-retry"] == "false"
        assert "has used 100 tokens" in error.message and "modelhost quotas set" in error.message
        ok = await world.reserve(prompt=10, max_tokens=10)  # 100 + 20 fits
        await world.limiter.settle(ok, prompt_tokens=10, completion_tokens=2)  # counter now 112
        await world.reserve(prompt=4, max_tokens=4, request_id="a")  # 112 + 8 = 120 fits
        with pytest.raises(QuotaExceeded):
            await world.reserve(prompt=1, max_tokens=0, request_id="b")

    store.run(body)


def test_organization_quota_counts_every_project(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.spent(50, 0)
    world.quota(hard=60, scope="organization")

    async def body() -> None:
        with pytest.raises(QuotaExceeded) as refused:
            await world.reserve(prompt=11, max_tokens=0)
        assert f"organization {world.org}" in refused.value.message
        await world.reserve(prompt=10, max_tokens=0)

    store.run(body)


def _second_project(world: World) -> Principal:
    with world.sessions() as session:
        project = tenancy.create_project(session, world.org, "Second")
        session.commit()
        return Principal(world.org, project.id, "user-1", "key_2", "project")


def test_organization_limits_count_every_project_together(tmp_path: Path, store: Store) -> None:
    """More projects never mean more capacity: the organization's limits cap them together (issue #12, item 2)."""
    world = World(tmp_path, store)
    with world.sessions() as session:
        stored.put_rate_limit(session, organization_id=world.org, scope="organization", scope_id=world.org,
                              model="*", values={"max_requests_per_1_minute": 3})
        session.commit()
    second = _second_project(world)

    async def body() -> None:
        remaining = []
        for i, who in enumerate((world.who, second, world.who)):
            held = await world.reserve(prompt=1, max_tokens=1, request_id=f"r{i}", who=who)
            remaining.append(held.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        with pytest.raises(RateLimitExceeded) as refused:
            await world.reserve(prompt=1, max_tokens=1, request_id="r3", who=second)
        assert f"in organization {world.org} on requests per min (RPM): Limit 3, Used 3" in refused.value.message

    store.run(body)


def test_a_project_below_its_organization_meets_both_limits(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    with world.sessions() as session:
        stored.put_rate_limit(session, organization_id=world.org, scope="organization", scope_id=world.org,
                              model="*", values={"max_requests_per_1_minute": 5})
        stored.put_rate_limit(session, organization_id=world.org, scope="project", scope_id=world.project,
                              model=MODEL, values={"max_requests_per_1_minute": 2}, set_by="admin")
        session.commit()
    second = _second_project(world)

    async def body() -> None:
        first = await world.reserve(request_id="a")
        assert (first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
        await world.reserve(request_id="b")
        with pytest.raises(RateLimitExceeded) as refused:
            await world.reserve(request_id="c")  # the project's own 2
        assert "Limit 2, Used 2" in refused.value.message
        for i in range(3):  # the organization's 5 has 3 left, for the other project
            held = await world.reserve(prompt=1, max_tokens=1, request_id=f"s{i}", who=second)
        assert (held.headers["x-ratelimit-limit-requests"], held.headers["x-ratelimit-remaining-requests"]) == ("5", "0")
        with pytest.raises(RateLimitExceeded):
            await world.reserve(prompt=1, max_tokens=1, request_id="s3", who=second)

    store.run(body)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_quota_rebuilt_while_a_request_runs_is_not_under_counted(tmp_path: Path, kind: str) -> None:
    """Redis loses its data (FLUSHALL) between a request's reserve and its settle; the next request
    rebuilds the counter from the ledger, which does not know the running request. Its settle must
    then add what it cost, not give back an estimate the new counter never held (issue #12, item 12).
    In-process, the counter vanishing (it expired) is the same event."""
    with contextlib.ExitStack() as stack:
        clock = FakeClock()
        if kind == "redis":
            if shutil.which("redis-server") is None:
                pytest.skip("needs redis-server for a Redis of its own")
            url = stack.enter_context(private_redis())
            backend: LimitBackend = RedisBackend(url)
            store = Store("redis", backend, clock, "mh:", peer=lambda: backend, opened=[backend])
        else:
            backend = MemoryBackend(clock=clock)
            store = Store("memory", backend, clock, "mh:", peer=lambda: backend)

        def lose_everything() -> None:
            if kind == "redis":
                client = redis.Redis.from_url(url)
                client.flushall()
                client.close()
            else:
                clock.advance(40 * 86_400)  # past any counter's lifetime; the ledger's month is today's

        world = World(tmp_path, store)
        world.spent(60, 40)  # 100 tokens already in the ledger
        world.quota(hard=400)

        async def body() -> None:
            running = await world.reserve(prompt=10, max_tokens=200, request_id="running")  # 210 reserved: 310
            lose_everything()
            other = await world.reserve(prompt=10, max_tokens=5, request_id="other")  # rebuilt: 100 + 15
            await world.limiter.settle(running, prompt_tokens=10, completion_tokens=20)  # it cost 30: 145
            world.spent(10, 20, request_id="running")
            await world.limiter.settle(other, prompt_tokens=10, completion_tokens=5)  # 15 as estimated: 145
            world.spent(10, 5, request_id="other")
            # The ledger says 145 were spent; the counter agrees, so 260 more do not fit in 400
            # (before the fix the counter said 145 - 210 = -65, and they did).
            with pytest.raises(QuotaExceeded) as refused:
                await world.reserve(prompt=10, max_tokens=250, request_id="next")
            assert "has used 145 tokens" in refused.value.message
            await world.reserve(prompt=10, max_tokens=245, request_id="fits")  # exactly 400

        store.run(body)


def test_money_quota_prices_tokens_per_model(tmp_path: Path, store: Store) -> None:
    # $1 per million prompt tokens, $2 per million completion tokens: a token costs 1 or 2 millionths.
    world = World(tmp_path, store, prices={MODEL: ModelPrice(input=1.0, output=2.0)})
    world.spent(100, 50)  # 100 + 100 = 200 millionths
    world.quota(unit="usd", hard=300)

    async def body() -> None:
        with pytest.raises(QuotaExceeded) as refused:
            await world.reserve(prompt=10, max_tokens=46)  # 10 + 92 = 102 > 100 left
        assert "$0.00" in refused.value.message  # amounts in dollars
        await world.reserve(prompt=10, max_tokens=45)  # exactly 100

    store.run(body)


def test_soft_limit_only_warns_once_when_crossed(tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path, store)
    world.quota(soft=30)

    async def body() -> None:
        for i in range(4):
            held = await world.reserve(prompt=10, max_tokens=5, request_id=f"r{i}")
            await world.limiter.settle(held, prompt_tokens=10, completion_tokens=2)  # 12 each: 12, 24, 36, 48

    with caplog.at_level(logging.WARNING, logger="modelhost.limits.limiter"):
        store.run(body)
    warnings = [r.getMessage() for r in caplog.records if "soft" in r.getMessage()]
    assert len(warnings) == 1 and "36 tokens of 30 tokens" in warnings[0]


def test_release_gives_back_all_but_the_request(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_requests_per_1_minute=2, max_tokens_per_1_minute=50)
    world.quota(hard=50)
    with world.sessions() as session:
        stored.put_rate_limit(session, organization_id=world.org, scope="organization", scope_id=world.org,
                              model="*", values={"max_concurrent_requests": 1})
        session.commit()

    async def body() -> None:
        held = await world.reserve(prompt=20, max_tokens=30)
        await world.limiter.release(held)  # e.g. the engine queue was full: tokens, budget and lease come back
        again = await world.reserve(prompt=20, max_tokens=30, request_id="again")
        assert again.headers["x-ratelimit-remaining-requests"] == "0"  # the released one was planned: it counts
        assert again.headers["x-ratelimit-remaining-tokens"] == "0"

    store.run(body)


def test_concurrent_requests_per_key_are_capped(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    with world.sessions() as session:
        stored.put_rate_limit(
            session, organization_id=world.org, scope="organization", scope_id=world.org, model="*",
            values={"max_concurrent_requests": 2},
        )
        session.commit()

    async def body() -> None:
        a = await world.reserve(request_id="a")
        await world.reserve(request_id="b")
        with pytest.raises(RateLimitExceeded) as refused:
            await world.reserve(request_id="c")
        assert "concurrent requests per key: Limit 2" in refused.value.message
        assert refused.value.headers["retry-after"] == "1"
        await world.limiter.settle(a, prompt_tokens=10, completion_tokens=1)
        await world.reserve(request_id="c")

    store.run(body)


def test_limits_resolve_per_level_and_a_project_is_never_above_its_organization(tmp_path: Path) -> None:
    store_ = Store("memory", MemoryBackend(), None, "t:", peer=lambda: None)  # type: ignore[arg-type]
    world = World(tmp_path, store_)
    world.limiter.policy.defaults = RateLimits(1000, 5000, 0, 0)

    def put(scope: str, model: str, set_by: str = "operator", **values: int | None) -> None:
        with world.sessions() as session:
            scope_id = world.org if scope == "organization" else world.project
            stored.put_rate_limit(session, organization_id=world.org, scope=scope, scope_id=scope_id, model=model,
                                  values=values, set_by=set_by)
            session.commit()

    def lookup(model: str = MODEL, project: str | None = None) -> AppliedLimits:
        return world.limiter.policy.lookup(world.org, project or world.project, model)[0]

    assert lookup() == AppliedLimits(RateLimits(1000, 5000, 0, 0), RateLimits(0, 0, 0, 0))  # the settings: the organization's
    put("organization", "*", max_requests_per_1_minute=50, max_tokens_per_1_minute=700)
    put("organization", MODEL, max_tokens_per_1_minute=600)
    put("project", "*", max_requests_per_1_minute=7)
    assert lookup() == AppliedLimits(RateLimits(50, 600, 0, 0), RateLimits(7, 0, 0, 0))
    assert lookup().effective == RateLimits(7, 600, 0, 0)
    assert lookup("other-model").effective == RateLimits(7, 700, 0, 0)
    assert lookup("other-model", "proj_other").effective == RateLimits(50, 700, 0, 0)
    # A project row above its organization's, or at 0 (no limit), does not lift the organization's.
    put("project", MODEL, max_requests_per_1_minute=90, max_tokens_per_1_minute=0)
    assert lookup().effective == RateLimits(50, 600, 0, 0)
    # The admin's row sits beside the operator's: the tighter of them applies.
    put("project", MODEL, "admin", max_requests_per_1_minute=20)
    assert lookup().effective == RateLimits(20, 600, 0, 0)
    put("project", MODEL, "operator", max_requests_per_1_minute=9)
    assert lookup().effective == RateLimits(9, 600, 0, 0)


def test_an_unreachable_database_refuses_instead_of_allowing(tmp_path: Path) -> None:
    import asyncio

    sessions = session_factory(open_engine("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=1"))
    limiter = Limiter(MemoryBackend(), LimitPolicy(sessions, NO_LIMITS), UsageLedger(sessions), prices={})
    who = Principal("org-x", "proj_x", "user-x", "key_x", "project")
    with pytest.raises(LimitsUnavailable) as refused:
        asyncio.run(limiter.admit(who, model=MODEL, request_id="r"))
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
