"""Fuzzing for issue #12: the limits classes behind items 12, 2 and 7, not just their known examples.

Each test draws a random sequence of operations, runs it against the component itself (the
limiter on both limit stores, the settings service on SQLite and PostgreSQL) and compares the
result after every step with a small model of what the documented behaviour must give. No server
and no model: each test takes a few seconds. The fair shares of item 6 are fuzzed in
`test_R2_fuzz_fair_share.py`.

- R2-12, quota re-seed: requests reserve random estimates against an organization's and a
  project's quota (tokens or dollars, with or without a hard limit), settle with random actual
  costs (then the ledger row is written, as the server does) or are released, and the store
  loses its counters in between (FLUSHALL on a Redis of this module alone; expiry in the
  in-process store). After every step each counter is what its seed (the ledger when it was
  rebuilt) plus the estimates it holds plus the actual costs settled into it make; a release
  gives nothing back to a counter that never held it; refusals happen exactly when the model's
  counter is over the limit; once nothing runs, a counter equals the ledger (in dollars, up to
  the rounding: a request's cost is rounded up when counted, the ledger's totals when re-seeded).
- R2-2, tenants cannot loosen operator limits: random operator settings (organization and
  project, one model or all) and admin-key project updates with values from {0, 1, cap−1, cap,
  cap+1, 2^31−1, 2^31, 2^53, 2^53+1, −1, 1.5, True, "10", None}. Each is either accepted or a 400
  naming a refused field, exactly as the rules predict, never another exception; the project's
  effective limits are always what the rows resolve to, at most the organization's and the
  operator's, never 0 (no limit) where either has one.
- R2-7, metering: with a project's RPM N (and maybe its organization's), admissions that fail
  their planning, reserve once or several times, are refused on tokens, settle, release, or are
  abandoned (twice, or after a reservation took their lease) in any order: every admission counts
  one request (its remaining-requests header), the admission after the limit is refused whatever
  the mix, and the key's concurrency lease is held exactly as long as the model says (freed once).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from limits.conftest import FakeClock, needs_redis_server, private_redis
from modelhost.auth import Principal
from modelhost.config import ModelPrice, Settings
from modelhost.errors import InvalidRequest
from modelhost.limits import Admission, LimitPolicy, Limiter, QuotaExceeded, RateLimitExceeded, RateLimits, Reservation
from modelhost.limits.base import Adjustment, Budget, LimitBackend, Lease
from modelhost.limits.memory import MemoryBackend
from modelhost.limits.policy import cost, current_period
from modelhost.limits.prices import PriceTable
from modelhost.limits.redis_backend import RedisBackend
from modelhost.limits.service import LimitSettings
from modelhost.organization import Scope as AdminScope
from modelhost.store import UsageEntry, UsageLedger, migrate, open_engine, session_factory
from modelhost.store import limits as stored
from modelhost.store import tenancy

MODEL = "m"
NO_LIMITS = RateLimits(0, 0, 0, 0)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=timezone.utc)  # the limiter's clock: one quota period throughout
PRICES = PriceTable({MODEL: ModelPrice(input=3.0, output=7.5)})  # millionths of a dollar per token
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def fuzz(examples: int) -> settings:
    """Bounded runs; each example makes its own organization, so the module's fixtures are shared safely."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- the limiter's world: a migrated store, organizations made per example, a limit store -------------


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    engine = open_engine(f"sqlite:///{tmp_path_factory.mktemp('r2-fuzz-limits') / 'store.db'}")
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis of this module alone: the quota test wipes it (FLUSHALL), never the shared one's keys."""
    if shutil.which("redis-server") is None:
        yield ""  # the Redis cases are skipped (needs_redis_server)
        return
    with private_redis() as url:
        yield url


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis_server)])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Stores:
    """One limit store of an example, and how it loses its data."""

    kind: str
    backend: LimitBackend
    clock: FakeClock
    redis_url: str

    def lose_data(self) -> None:
        if self.kind == "redis":
            client = redis.Redis.from_url(self.redis_url)
            try:
                client.flushall()  # this module's own Redis: Redis lost everything
            finally:
                client.close()
        else:
            self.clock.advance(10**9)  # every counter of the in-process store expired


@contextlib.asynccontextmanager
async def limit_store(kind: str, url: str) -> AsyncIterator[Stores]:
    clock = FakeClock()
    backend: LimitBackend = MemoryBackend(clock=clock) if kind == "memory" else RedisBackend(url, clock=clock)
    try:
        yield Stores(kind, backend, clock, url)
    finally:
        await backend.close()


def new_organization(sessions: sessionmaker[Session], projects: int = 1) -> tuple[str, list[str]]:
    with sessions() as session:
        org = tenancy.create_organization(session, f"fuzz-{uuid.uuid4().hex[:10]}")
        session.flush()
        default = tenancy.default_project(session, org.id)
        assert default is not None
        ids = [default.id] + [tenancy.create_project(session, org.id, f"p{i}").id for i in range(1, projects)]
        session.commit()
        return org.id, ids


def limiter_for(sessions: sessionmaker[Session], stores: Stores) -> Limiter:
    return Limiter(
        stores.backend,
        LimitPolicy(sessions, NO_LIMITS, cache_seconds=0),
        UsageLedger(sessions),
        prices=PRICES,
        key_prefix=f"fuzz{uuid.uuid4().hex[:8]}",
        now=lambda: NOW,
    )


async def budget_of(backend: LimitBackend, key: str) -> tuple[int, str] | None:
    """A budget counter's (value, generation), or None if it does not exist; reads without changing it."""
    outcome = await backend.acquire([Budget(key, None, 0, 60)])
    if outcome.missing:
        return None
    return int(outcome.states[0].level), outcome.states[0].epoch


async def holders_of(backend: LimitBackend, key: str) -> int:
    """How many hold a lease of `key` now (taking one more for a moment, then giving it back)."""
    probe = Lease(key, 10**6, f"probe-{uuid.uuid4().hex}", 60)
    outcome = await backend.acquire([probe])
    assert outcome.allowed
    await backend.settle([Adjustment(probe)])
    return int(outcome.states[0].level) - 1


# -- R2-12: quota counters re-seeded from the ledger --------------------------------------------------


@dataclass
class ModelCounter:
    """What one quota counter must hold: its seed plus the estimates and actual costs it took since."""

    scope: str  # "organization" or "project"
    unit: str
    hard: int | None
    key: str
    exists: bool = False
    value: int = 0
    generation: int = 0  # how many times it was seeded
    epochs: list[str] = field(default_factory=list)  # the store's generation of each seed


@dataclass
class Running:
    reservation: Reservation
    project: int
    prompt: int
    completion_most: int  # max_tokens × n
    estimates: dict[str, int]  # counter key → estimate taken there
    generations: dict[str, int]  # counter key → the generation it was taken from


_request = st.tuples(st.just("request"), st.integers(0, 1), st.integers(0, 300), st.integers(0, 200), st.integers(1, 3))
_settle = st.tuples(st.just("settle"), st.integers(0, 50), st.floats(0, 1))
_release = st.tuples(st.just("release"), st.integers(0, 50))
quota_ops = st.lists(  # weighted towards requests that run across a loss of the counters
    st.one_of(_request, _request, _request, _settle, _settle, _release, st.tuples(st.just("lose"))),
    min_size=8,
    max_size=30,
)
hard_limits = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 4000), st.integers(4000, 50_000))


# The known shape of the bug: requests running while the counters are lost and rebuilt, then settled and released.
ACROSS_A_LOSS = [
    ("request", 0, 40, 100, 1), ("request", 0, 30, 50, 2), ("request", 1, 10, 10, 1), ("lose",), ("request", 1, 5, 5, 1),
    ("settle", 0, 0.31), ("release", 0), ("lose",), ("settle", 1, 1.0), ("request", 0, 1, 1, 1), ("settle", 0, 0.5),
]


@fuzz(80)
@example(ops=ACROSS_A_LOSS, org_unit="tokens", project_unit="usd", org_hard=None, project_hard=None)
@example(ops=ACROSS_A_LOSS, org_unit="usd", project_unit="tokens", org_hard=10_000, project_hard=500)
@given(
    ops=quota_ops,
    org_unit=st.sampled_from(["tokens", "usd"]),
    project_unit=st.sampled_from(["tokens", "usd", None]),
    org_hard=hard_limits,
    project_hard=hard_limits,
)
def test_quota_counters_equal_their_seed_plus_what_was_settled_into_them(
    sessions: sessionmaker[Session],
    redis_url: str,
    store_kind: str,
    ops: list[tuple],
    org_unit: str,
    project_unit: str | None,
    org_hard: int | None,
    project_hard: int | None,
) -> None:
    note(f"{ops=} {org_unit=} {project_unit=} {org_hard=} {project_hard=}")
    org, projects = new_organization(sessions, projects=2)
    with sessions() as session:
        stored.put_quota(session, organization_id=org, scope="organization", scope_id=org, unit=org_unit, period="month",
                         hard_limit=org_hard, soft_limit=None)
        if project_unit is not None:
            stored.put_quota(session, organization_id=org, scope="project", scope_id=projects[0], unit=project_unit,
                             period="month", hard_limit=project_hard, soft_limit=None)
        session.commit()
    ledger = UsageLedger(sessions)
    settled: list[tuple[int, int, int]] = []  # (project, prompt, completion) of the ledger's rows

    def ledger_total(counter: ModelCounter) -> int:
        """What the ledger says the counter's scope spent: the cost of each project's totals."""
        total = 0
        for project in (0, 1) if counter.scope == "organization" else (0,):
            rows = [(prompt, completion) for p, prompt, completion in settled if p == project]
            total += cost(counter.unit, MODEL, sum(r[0] for r in rows), sum(r[1] for r in rows), PRICES)
        return total

    async def main() -> None:
        async with limit_store(store_kind, redis_url) as stores:
            limiter = limiter_for(sessions, stores)
            label = current_period("month", NOW).label
            whos = [Principal(org, p, "user-1", f"key-{i}", "project") for i, p in enumerate(projects)]
            counters = [ModelCounter("organization", org_unit, org_hard, limiter._key(whos[0], "quota", "organization", org,
                                                                                       org_unit, "month", label))]
            if project_unit is not None:
                counters.append(ModelCounter("project", project_unit, project_hard, limiter._key(
                    whos[0], "quota", "project", projects[0], project_unit, "month", label)))
            running: list[Running] = []
            requests = 0

            def counters_of(project: int) -> list[ModelCounter]:
                return [c for c in counters if c.scope == "organization" or project == 0]

            async def check(step: object) -> None:
                for counter in counters:
                    found = await budget_of(stores.backend, counter.key)
                    if not counter.exists:
                        assert found is None, (step, counter)
                        continue
                    assert found is not None, (step, counter)
                    assert found[0] == counter.value, (step, counter, found)
                    assert found[1] == counter.epochs[-1], (step, "the generation changes when, and only when, it is re-seeded")

            async def end(r: Running, completion: int | None) -> None:
                """Settle `r` with `completion` tokens (then write its ledger row, as the server does), or
                release it (None: refused before it ran, nothing spent); and the same in the model."""
                if completion is None:
                    await limiter.release(r.reservation)
                else:
                    await limiter.settle(r.reservation, prompt_tokens=r.prompt, completion_tokens=completion)
                    settled.append((r.project, r.prompt, completion))
                    ledger.record(UsageEntry(r.reservation.request_id, NOW, org, projects[r.project], "user-1",
                                             f"key-{r.project}", MODEL, "chat.completions", r.prompt, completion, "completed"))
                kind = "release" if completion is None else "settle"
                for c in counters_of(r.project):
                    if not c.exists:
                        event(f"R2-12: {kind} finds its counter lost")
                        continue  # nothing to correct: the ledger has the row for the next seed
                    spent = 0 if completion is None else cost(c.unit, MODEL, r.prompt, completion, PRICES)
                    same = r.generations[c.key] == c.generation
                    if not same:
                        event(f"R2-12: {kind} into a counter re-seeded since its reservation")
                    c.value += spent - (r.estimates[c.key] if same else 0)  # a re-seeded counter never held the estimate

            for op in ops:
                if op[0] == "request":
                    _, project, prompt, max_tokens, n = op
                    requests += 1
                    rid = f"q{requests}-{uuid.uuid4().hex[:8]}"
                    mine = counters_of(project)
                    reseeded = [c for c in mine if not c.exists]
                    for c in reseeded:  # the limiter rebuilds a missing counter from the ledger first
                        c.exists, c.value, c.generation = True, ledger_total(c), c.generation + 1
                    estimates = {c.key: cost(c.unit, MODEL, prompt, max_tokens * n, PRICES) for c in mine}
                    fits = all(c.hard is None or c.value + estimates[c.key] <= c.hard for c in mine)
                    admission = await limiter.admit(whos[project], model=MODEL, request_id=rid)
                    try:
                        held = await limiter.reserve(admission, request_id=rid, prompt_tokens=prompt, max_tokens=max_tokens, n=n)
                    except QuotaExceeded:
                        assert not fits, (op, [(c.value, c.hard) for c in mine], estimates)
                        event("R2-12: a quota refused a reservation")
                        held = None
                    finally:
                        await limiter.abandon(admission)
                    for c in reseeded:
                        found = await budget_of(stores.backend, c.key)
                        assert found is not None and found[1] not in c.epochs, (op, c, found)  # a new generation
                        c.epochs.append(found[1])
                    if held is not None:
                        assert fits, (op, [(c.value, c.hard) for c in mine], estimates)
                        for c in mine:
                            c.value += estimates[c.key]
                        running.append(Running(held, project, prompt, max_tokens * n, estimates,
                                               {c.key: c.generation for c in mine}))
                elif op[0] in ("settle", "release") and running:
                    r = running.pop(op[1] % len(running))
                    await end(r, math.floor(op[2] * r.completion_most) if op[0] == "settle" else None)
                elif op[0] == "lose":
                    stores.lose_data()
                    for c in counters:
                        c.exists = False
                await check(op)

            for i, r in enumerate(running):  # everything ends: settled or released
                await end(r, None if i % 2 else r.completion_most)
            await check("all ended")
            for c in counters:  # nothing runs: each counter is what the ledger says its scope spent
                if c.exists and c.unit == "tokens":
                    assert c.value == ledger_total(c), c
                elif c.exists:  # dollars are rounded up per request when counted, per total when re-seeded
                    assert 0 <= c.value - ledger_total(c) <= len(settled), (c, ledger_total(c))

    asyncio.run(main())


# -- R2-2: tenants cannot loosen what the operator set ------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def limit_sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('r2-fuzz-settings') / 'store.db'}"
        name = None
    else:  # PostgreSQL's INTEGER holds less than SQLite's: a value that fits one may not fit the other
        name = f"modelhost_fuzz_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    engine = open_engine(url)
    try:
        migrate(engine)
        yield session_factory(engine)
    finally:
        engine.dispose()
        if name is not None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


FIELDS = ("max_requests_per_1_minute", "max_tokens_per_1_minute", "max_requests_per_1_day", "max_concurrent_requests")
OPENAI = FIELDS[:3]
DEFAULTS = {"max_requests_per_1_minute": 600, "max_tokens_per_1_minute": 90_000, "max_requests_per_1_day": 0, "max_concurrent_requests": 8}
TOKENS = "max_tokens_per_1_minute"  # the one field stored as a 64-bit integer everywhere


def largest(name: str) -> int:
    """The largest value a field takes: the tokens 2^53 (exact in Redis's Lua), the others a 32-bit INTEGER."""
    return 2**53 if name == TOKENS else 2**31 - 1


def tighter(*limits: int | None) -> int:
    return min((limit for limit in limits if limit), default=0)


class SettingsModel:
    """The rows set so far (per setter, scope and model), and what they must resolve to."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, dict[str, int | None]]] = {}  # (setter, scope) → model → field → value

    def put(self, setter: str, scope: str, model: str, values: dict[str, object]) -> None:
        row = self.rows.setdefault((setter, scope), {}).setdefault(model, dict.fromkeys(FIELDS))
        row.update(values)  # type: ignore[arg-type]

    def most_specific(self, setter: str, scope: str, name: str, model: str) -> int | None:
        rows = self.rows.get((setter, scope), {})
        for wanted in (model, stored.ALL_MODELS):
            value = rows.get(wanted, {}).get(name)
            if value is not None:
                return value
        return None

    def organization(self, name: str, model: str) -> int:
        found = self.most_specific("operator", "organization", name, model)
        return DEFAULTS[name] if found is None else found

    def operator_ceiling(self, name: str, model: str) -> int:
        """The most an admin key may set: the organization's limit and the operator's on the project."""
        return tighter(self.organization(name, model), self.most_specific("operator", "project", name, model))

    def effective(self, name: str, model: str) -> int:
        return tighter(
            self.organization(name, model),
            self.most_specific("operator", "project", name, model),
            self.most_specific("admin", "project", name, model),
        )


@dataclass(frozen=True)
class Cap:
    """A value beside the ceiling an update meets (the organization's limit, or the most the operator allows
    the project; 100 where there is none)."""

    offset: int


CHOICES = [0, 1, Cap(-1), Cap(0), Cap(1), -1, 1.5, True, False, "10", 2**31 - 1, 2**31, 2**53, 2**53 + 1, None]
setting_ops = st.lists(
    st.tuples(
        st.sampled_from(["operator-organization", "operator-project", "admin"]),
        st.sampled_from([MODEL, stored.ALL_MODELS]),
        st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(CHOICES), min_size=1, max_size=2),
    ),
    min_size=1,
    max_size=12,
)


@fuzz(60)
# A 32-bit column: 2^31 requests per minute, where the operator set no limit, was a 500 on PostgreSQL.
@example(ops=[("operator-organization", "*", {"max_requests_per_1_minute": 0}), ("admin", MODEL, {"max_requests_per_1_minute": 2**31}),
              ("operator-organization", MODEL, {"max_requests_per_1_day": 2**31}), ("admin", MODEL, {"max_requests_per_1_minute": 0})])
@given(ops=setting_ops)
def test_no_admin_update_lifts_a_project_above_the_operator(limit_sessions: sessionmaker[Session], ops: list[tuple]) -> None:
    sessions = limit_sessions
    org, (project,) = new_organization(sessions)
    service = LimitSettings(
        sessions,
        Settings(
            rate_limit_requests_per_minute=DEFAULTS["max_requests_per_1_minute"],
            rate_limit_tokens_per_minute=DEFAULTS["max_tokens_per_1_minute"],
            rate_limit_requests_per_day=DEFAULTS["max_requests_per_1_day"],
            rate_limit_concurrent_requests_per_key=DEFAULTS["max_concurrent_requests"],
        ),
        [MODEL],
    )
    model = SettingsModel()
    for who, row_model, choices in ops:
        if who == "admin":
            row_model = MODEL  # the Administration API's rate limits are per model (rl-MODEL)

        def caps(name: str) -> int:
            if who == "admin":
                return model.operator_ceiling(name, row_model)
            return model.organization(name, row_model)

        values = {name: (caps(name) or 100) + c.offset if isinstance(c, Cap) else c for name, c in choices.items()}
        note(f"{who} {row_model} {values}")

        refused: set[str] = set()
        for name, value in values.items():
            if who == "admin" and name not in OPENAI:
                continue  # not an OpenAI field: ignored
            valid = value is None or (type(value) is int and 0 <= value <= largest(name))
            if not valid:
                refused.add(name)
            elif who != "operator-organization" and value is not None and caps(name) and (value == 0 or value > caps(name)):
                refused.add(name)  # above the organization's or the operator's: only lower is allowed
            elif who != "admin" and name == "max_concurrent_requests" and row_model != stored.ALL_MODELS and value is not None:
                refused.add(name)  # per key over all models

        try:
            if who == "admin":
                service.update_project_rate_limit(AdminScope(org), project, f"rl-{MODEL}", values)  # type: ignore[arg-type]
            else:
                scope = service.scope(organization=org) if who == "operator-organization" else service.scope(project=project)
                service.set_rate_limits(scope, values, model=row_model)  # type: ignore[arg-type]
        except InvalidRequest as exc:
            assert exc.status == 400 and exc.param in refused, (who, row_model, values, exc.param, exc.message)
            event(f"R2-2: {who} refused")
        else:
            assert not refused, (who, row_model, values, "accepted")
            event(f"R2-2: {who} accepted")
            kept = {k: v for k, v in values.items() if who != "admin" or k in OPENAI}
            model.put("admin" if who == "admin" else "operator", who.split("-")[-1] if who != "admin" else "project", row_model, kept)

        shown = service.show_rate_limits(service.scope(project=project))["effective"]
        effective = next(e for e in shown if e["model"] == MODEL)  # type: ignore[union-attr, index]
        for name in FIELDS:
            value = effective[name]
            assert value == model.effective(name, MODEL), (name, effective, model.rows)
            for cap in (model.organization(name, MODEL), model.most_specific("operator", "project", name, MODEL)):
                if cap:
                    assert 0 < value <= cap, (name, value, cap)
        openai = next(o for o in service.project_rate_limits(org, project) if o["model"] == MODEL)
        assert all(openai[name] == effective[name] for name in OPENAI)


# -- R2-7: every request is metered once, whatever becomes of it ---------------------------------------


@dataclass
class Admitted:
    admission: Admission
    lease: bool  # it still holds the key's lease itself
    reservations: int = 0


@dataclass
class Reserved:
    reservation: Reservation
    estimate: int
    lease: bool  # it took the admission's lease over


_admit = st.tuples(st.just("admit"))
_reserve = st.tuples(st.just("reserve"), st.integers(0, 30), st.integers(0, 60), st.integers(0, 60))
metering_ops = st.lists(
    st.one_of(
        _admit,
        _admit,
        st.tuples(st.just("abandon"), st.integers(0, 30)),
        _reserve,
        _reserve,
        st.tuples(st.sampled_from(["settle", "release"]), st.integers(0, 30), st.floats(0, 1)),
    ),
    min_size=6,
    max_size=30,
)
# Requests that fail their planning, then one that runs, then the admission past the limit.
PLANNING_FAILS = [("admit",), ("abandon", 0), ("admit",), ("reserve", 1, 10, 10), ("abandon", 1), ("abandon", 0), ("admit",),
                  ("reserve", 2, 5, 5), ("reserve", 2, 5, 5), ("release", 0, 0.0), ("admit",), ("settle", 0, 0.5), ("admit",)]


@fuzz(80)
@example(ops=PLANNING_FAILS, rpm=3, org_rpm=0, concurrency=1, tpm=50)
@example(ops=PLANNING_FAILS, rpm=4, org_rpm=3, concurrency=2, tpm=0)
@given(
    ops=metering_ops,
    rpm=st.integers(1, 6),
    org_rpm=st.sampled_from([0, 1, 3, 100]),
    concurrency=st.sampled_from([0, 1, 2, 3]),
    tpm=st.sampled_from([0, 50, 150]),
)
def test_each_admission_is_one_request_and_the_lease_is_freed_once(
    sessions: sessionmaker[Session], redis_url: str, store_kind: str, ops: list[tuple], rpm: int, org_rpm: int,
    concurrency: int, tpm: int,
) -> None:
    org, (project,) = new_organization(sessions)
    with sessions() as session:
        stored.put_rate_limit(session, organization_id=org, scope="project", scope_id=project, model=MODEL,
                              values={"max_requests_per_1_minute": rpm, "max_tokens_per_1_minute": tpm or None})
        stored.put_rate_limit(session, organization_id=org, scope="organization", scope_id=org, model=stored.ALL_MODELS,
                              values={"max_requests_per_1_minute": org_rpm, "max_concurrent_requests": concurrency})
        session.commit()
    limit = tighter(rpm, org_rpm)
    who = Principal(org, project, "user-1", "key-1", "project")

    async def main() -> None:
        async with limit_store(store_kind, redis_url) as stores:  # its clock stands still: nothing refills
            limiter = limiter_for(sessions, stores)
            lease_key = limiter._key(who, "concurrent", who.key_id)
            admitted: list[Admitted] = []
            reserved: list[Reserved] = []
            counted = 0
            tokens = tpm  # the TPM bucket's level

            def holding() -> int:
                return sum(a.lease for a in admitted) + sum(r.lease for r in reserved)

            for step, op in enumerate(ops):
                if op[0] == "admit":
                    busy = concurrency and holding() >= concurrency
                    try:
                        admission = await limiter.admit(who, model=MODEL, request_id=f"r{step}")
                    except RateLimitExceeded as exc:
                        assert busy or counted >= limit, (op, counted, holding())
                        event("R2-7: admission refused on " + ("concurrency" if busy else "RPM"))
                        expected = "concurrent requests per key" if busy else f"requests per min (RPM): Limit {limit}, Used {limit}"
                        assert expected in exc.message, exc.message
                    else:
                        assert not busy and counted < limit, (op, counted, holding())
                        counted += 1
                        assert admission.headers["x-ratelimit-remaining-requests"] == str(limit - counted)
                        admitted.append(Admitted(admission, lease=bool(concurrency)))
                elif op[0] == "abandon" and admitted:
                    a = admitted[op[1] % len(admitted)]
                    event(f"R2-7: abandon after {min(a.reservations, 2)} reservations, lease {'held' if a.lease else 'gone'}")
                    await limiter.abandon(a.admission)  # a planning that failed, or the end of planning: any number of times
                    a.lease = False
                elif op[0] == "reserve" and admitted:
                    a = admitted[op[1] % len(admitted)]
                    estimate = op[2] + op[3]
                    try:
                        held = await limiter.reserve(a.admission, request_id=a.admission.request_id, prompt_tokens=op[2],
                                                     max_tokens=op[3], n=1)
                    except RateLimitExceeded as exc:
                        assert tpm and estimate > tokens, (op, tokens)
                        event("R2-7: reservation refused on tokens")
                        assert exc.type == "tokens"
                    else:
                        assert not tpm or estimate <= tokens, (op, tokens)
                        if tpm:
                            tokens -= estimate
                            assert held.headers["x-ratelimit-remaining-tokens"] == str(min(tokens, tpm))
                        assert held.headers["x-ratelimit-remaining-requests"] == a.admission.headers["x-ratelimit-remaining-requests"]
                        reserved.append(Reserved(held, estimate, lease=a.lease))  # the first one takes the lease over
                        a.lease = False
                        a.reservations += 1
                elif op[0] in ("settle", "release") and reserved:
                    r = reserved.pop(op[1] % len(reserved))
                    if op[0] == "settle":
                        used = math.floor(op[2] * r.estimate)
                        await limiter.settle(r.reservation, prompt_tokens=0, completion_tokens=used)
                        tokens = min(tpm, tokens + r.estimate - used)
                    else:
                        await limiter.release(r.reservation)
                        tokens = min(tpm, tokens + r.estimate)
                    r.lease = False
                assert await holders_of(stores.backend, lease_key) == holding(), (step, op)

            for a in admitted:  # every request ends; then only the request count is left
                await limiter.abandon(a.admission)
                a.lease = False
            for r in reserved:
                await limiter.release(r.reservation)
            assert await holders_of(stores.backend, lease_key) == 0
            try:
                await limiter.abandon(await limiter.admit(who, model=MODEL, request_id="last"))
            except RateLimitExceeded as exc:
                assert counted == limit and f"Limit {limit}, Used {limit}" in exc.message, (counted, exc.message)
            else:
                assert counted < limit

    asyncio.run(main())
