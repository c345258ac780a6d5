"""Batch work (`Principal.batch_id`) in the limiter: quotas at the batch price, never RPM, RPD, TPM
or a key's concurrency; the enqueued-token limit a batch meets when it is created."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from modelhost.config import ModelPrice
from modelhost.limits import EnqueuedTokenLimitExceeded, QuotaExceeded, RateLimitExceeded, RateLimits
from modelhost.limits.policy import cost
from modelhost.limits.prices import PriceTable
from modelhost.store import UsageEntry
from modelhost.store import limits as stored

from .conftest import Store
from .test_limiter import MODEL, World

PRICES = {MODEL: ModelPrice(input=1000.0, output=2000.0)}  # a token costs 1000 (2000) millionths of a dollar


def batch_of(world: World, batch_id: str = "batch_1") -> object:
    return dataclasses.replace(world.who, batch_id=batch_id)


def test_a_batch_line_takes_no_request_token_or_concurrency_limit(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(max_requests_per_1_minute=1, max_tokens_per_1_minute=20, max_requests_per_1_day=1, max_concurrent_requests=1)
    line = batch_of(world)

    async def body() -> None:
        held = await world.reserve(request_id="interactive", prompt=5, max_tokens=5)  # the one request allowed
        with pytest.raises(RateLimitExceeded):
            await world.reserve(request_id="second")
        for i in range(5):  # past RPM, RPD, the key's lease, and 100 tokens > TPM 20 per line
            reservation = await world.reserve(request_id=f"line-{i}", prompt=60, max_tokens=40, who=line)  # type: ignore[arg-type]
            assert reservation.lease is None and reservation.headers == {}
            await world.limiter.settle(reservation, prompt_tokens=60, completion_tokens=10)
        await world.limiter.settle(held, prompt_tokens=5, completion_tokens=5)

    store.run(body)


def test_a_batch_line_meets_the_quota_with_the_same_error_as_a_request(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.quota("tokens", hard=100)
    line = batch_of(world)

    async def body() -> None:
        first = await world.reserve(request_id="line-1", prompt=40, max_tokens=40, who=line)  # type: ignore[arg-type]
        await world.limiter.settle(first, prompt_tokens=40, completion_tokens=40)
        with pytest.raises(QuotaExceeded) as refused:
            await world.reserve(request_id="line-2", prompt=20, max_tokens=10, who=line)  # type: ignore[arg-type]
        with pytest.raises(QuotaExceeded) as interactive:
            await world.reserve(request_id="request", prompt=20, max_tokens=10)
        assert (refused.value.status, refused.value.code) == (interactive.value.status, interactive.value.code)
        assert refused.value.code == "insufficient_quota"

    store.run(body)


def test_batch_work_spends_a_money_quota_at_half_price(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store, prices=PRICES)
    world.quota("usd", hard=1_000_000)  # $1: 1000 input tokens, or 2000 of them as batch work
    line = batch_of(world)

    async def body() -> None:
        first = await world.reserve(request_id="line-1", prompt=1500, max_tokens=0, who=line)  # type: ignore[arg-type]
        await world.limiter.settle(first, prompt_tokens=1500, completion_tokens=0)  # $0.75
        with pytest.raises(QuotaExceeded):
            await world.reserve(request_id="request", prompt=300, max_tokens=0)  # $0.30 more: over
        second = await world.reserve(request_id="line-2", prompt=400, max_tokens=0, who=line)  # type: ignore[arg-type]
        await world.limiter.settle(second, prompt_tokens=400, completion_tokens=0)  # $0.20: $0.95 in all

    store.run(body)


def test_a_quota_counter_rebuilt_from_the_ledger_prices_batch_rows_at_the_batch_price(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store, prices=PRICES)
    world.quota("usd", hard=1_000_000)
    now = datetime.now(timezone.utc)
    for request_id, batch in (("interactive", False), ("line", True)):
        world.ledger.record(
            UsageEntry(request_id, now, world.org, world.project, "user-1", "key_1", MODEL, "chat.completions", 400, 0,
                       "completed", batch=batch)
        )
    # Spent: 400 × 1000 + 400 × 500 = $0.60; $0.40 is left.
    async def body() -> None:
        await world.reserve(request_id="fits", prompt=400, max_tokens=0)
        with pytest.raises(QuotaExceeded):
            await world.reserve(request_id="over", prompt=1, max_tokens=0)

    store.run(body)


def test_the_batch_multiplier_is_the_models_else_the_stars_else_half() -> None:
    table = PriceTable(
        {"m": ModelPrice(input=2.0, output=4.0), "n": ModelPrice(input=2.0, batch_multiplier=1.0), "*": ModelPrice(batch_multiplier=0.25)}
    )
    assert table.batch_multiplier("n") == 1.0
    assert table.batch_multiplier("m") == 0.25
    assert table.price_of("m", batch=True).input == 0.5 and table.price_of("m", batch=True).output == 1.0
    assert PriceTable({"m": ModelPrice(input=2.0)}).price_of("m", batch=True).input == 1.0
    assert PriceTable({}).batch_multiplier("any") == 0.5
    assert cost("usd", "m", 1000, 0, PriceTable({"m": ModelPrice(input=2.0)}), batch=True) == 1000
    assert cost("tokens", "m", 1000, 10, PriceTable({"m": ModelPrice(input=2.0)}), batch=True) == 1010


def _batch_row(world: World, batch_id: str, tokens: int, *, status: str = "in_progress", project: str | None = None,
               model: str = MODEL) -> None:
    """A row of the batches API's table with the columns the limit reads; any other required column
    gets a placeholder (the table is the batches API's, and grows with it)."""
    now = datetime.now(timezone.utc)
    values: dict[str, object] = {"id": batch_id, "organization_id": world.org, "project_id": project or world.project,
                                 "model": model, "status": status, "enqueued_tokens": tokens}
    with world.sessions() as session:
        for column in inspect(session.get_bind()).get_columns("batches"):
            if column["name"] in values or column["nullable"] or column.get("default") is not None:
                continue
            python = column["type"].python_type
            values[column["name"]] = now if python is datetime else 0 if python is int else "x"
        names = ", ".join(values)
        session.execute(text(f"INSERT INTO batches ({names}) VALUES ({', '.join(':' + n for n in values)})"), values)
        session.commit()


def test_the_enqueued_token_limit_counts_unfinished_batches_of_the_model(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(batch_1_day_max_input_tokens=1000)
    _batch_row(world, "batch_a", 600)
    _batch_row(world, "batch_done", 5000, status="completed")  # ended: holds nothing
    _batch_row(world, "batch_other_model", 5000, model="other")

    async def body() -> None:
        await world.limiter.check_batch_enqueue(world.who, model=MODEL, tokens=400)  # 600 + 400: at the limit
        with pytest.raises(EnqueuedTokenLimitExceeded) as refused:
            await world.limiter.check_batch_enqueue(world.who, model=MODEL, tokens=401)
        error = refused.value
        assert (error.status, error.code) == (429, "token_limit_exceeded")
        assert f"Enqueued token limit reached for {MODEL} in project {world.project}. Limit: 1,000" in error.message
        # The batch being checked leaves its own row out.
        await world.limiter.check_batch_enqueue(world.who, model=MODEL, tokens=1000, batch_id="batch_a")
        # No limit for another model.
        await world.limiter.check_batch_enqueue(world.who, model="other", tokens=10**9)

    store.run(body)


def test_the_organizations_enqueued_token_limit_counts_all_its_projects(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limiter.policy.defaults = RateLimits(0, 0, 0, 0, batch_1_day_max_input_tokens=1000)  # the settings' default
    with world.sessions() as session:
        from modelhost.store import tenancy

        other = tenancy.create_project(session, world.org, "Other")
        session.commit()
        other_id = other.id
    _batch_row(world, "batch_elsewhere", 900, project=other_id)

    async def body() -> None:
        with pytest.raises(EnqueuedTokenLimitExceeded) as refused:
            await world.limiter.check_batch_enqueue(world.who, model=MODEL, tokens=200)
        assert f"in organization {world.org}" in refused.value.message
        await world.limiter.check_batch_enqueue(world.who, model=MODEL, tokens=100)

    store.run(body)


def test_the_enqueued_token_limit_is_a_stored_rate_limit_field(tmp_path: Path, store: Store) -> None:
    world = World(tmp_path, store)
    world.limits(batch_1_day_max_input_tokens=5)
    with world.sessions() as session:
        rows = stored.rate_limits_for(session, world.org, world.project, MODEL)
    assert [row.batch_1_day_max_input_tokens for row in rows] == [5]
    applied, _ = world.limiter.policy.lookup(world.org, world.project, MODEL)
    assert applied.effective.batch_1_day_max_input_tokens == 5
