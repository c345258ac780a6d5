"""Batch lines in the ledger: the Usage API's `batch` filter and group_by, and Costs at the batch
multiplier, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from modelhost.config import ModelPrice
from modelhost.limits import PriceTable
from modelhost.organization import Scope, usage
from modelhost.protocol.admin import CompletionsUsageQuery, CostsQuery
from modelhost.store import UsageEntry, UsageLedger
from modelhost.store.ledger import PENDING, Spend
from store.databases import Database

T0 = 1_800_000_000 - 1_800_000_000 % 86400  # a UTC midnight
SCOPE = Scope("org-a")


def _row(n: int, project: str, model: str, prompt: int, completion: int, *, batch: bool, operation: str = "chat.completions") -> UsageEntry:
    return UsageEntry(
        request_id=f"req-{n}",
        created_at=datetime.fromtimestamp(T0 + 60 * n, timezone.utc),
        organization_id="org-a",
        project_id=project,
        user_id="user-1",
        api_key_id="key_1",
        model=model,
        operation=operation,
        prompt_tokens=prompt,
        completion_tokens=completion,
        outcome="completed",
        batch=batch,
    )


@pytest.fixture
def ledger(database: Database) -> UsageLedger:
    ledger = UsageLedger(database.sessions)
    for row in (
        _row(1, "p1", "m1", 100, 10, batch=False),
        _row(2, "p1", "m1", 1000, 200, batch=True),
        _row(3, "p2", "m1", 2000, 400, batch=True),
        _row(4, "p2", "e1", 50, 0, batch=True, operation="embeddings"),
    ):
        assert ledger.record(row)
    return ledger


def test_the_batch_filter_and_group_by_split_batch_work_from_the_rest(ledger: UsageLedger) -> None:
    day = CompletionsUsageQuery(start_time=T0, end_time=T0 + 86400)
    counts = lambda page: [(r.batch, r.input_tokens, r.output_tokens, r.num_model_requests) for r in page.data[0].results]  # noqa: E731
    assert counts(usage.completions(ledger, SCOPE, day.model_copy(update={"batch": True}), now=T0 + 86400)) == [(None, 3000, 600, 2)]
    assert counts(usage.completions(ledger, SCOPE, day.model_copy(update={"batch": False}), now=T0 + 86400)) == [(None, 100, 10, 1)]
    grouped = usage.completions(ledger, SCOPE, day.model_copy(update={"group_by": ["batch"]}), now=T0 + 86400)
    assert sorted(counts(grouped)) == [(False, 100, 10, 1), (True, 3000, 600, 2)]
    by_project = usage.completions(
        ledger, SCOPE, day.model_copy(update={"group_by": ["project_id", "batch"], "batch": True}), now=T0 + 86400
    )
    assert sorted((r.project_id, r.batch, r.input_tokens) for r in by_project.data[0].results) == [("p1", True, 1000), ("p2", True, 2000)]
    assert all(isinstance(r.batch, bool) for r in grouped.data[0].results)  # SQLite's 0/1 read back as booleans


def test_costs_price_batch_work_at_the_batch_multiplier_on_lines_of_their_own(ledger: UsageLedger) -> None:
    prices = PriceTable({"m1": ModelPrice(input=1.0, output=2.0), "*": ModelPrice(input=4.0, batch_multiplier=0.25)})
    day = CostsQuery(start_time=T0, end_time=T0 + 86400)
    total = usage.costs(ledger, SCOPE, day, prices=prices, now=T0 + 86400).data[0].results
    # m1: 100 × $1 + 10 × $2; its batch work at "*"'s multiplier (m1 has none of its own): (3000 × $1 + 600 × $2) × 0.25;
    # e1's batch work: 50 × $4 × 0.25.
    assert [r.amount.value for r in total] == [pytest.approx((100 + 20 + 1050 + 50) / 1e6)]
    lines = usage.costs(ledger, SCOPE, day.model_copy(update={"group_by": ["line_item"]}), prices=prices, now=T0 + 86400)
    found = {r.line_item: (r.quantity, r.amount.value) for r in lines.data[0].results}
    assert found == {
        "m1, input": (100, pytest.approx(100e-6)),
        "m1, output": (10, pytest.approx(20e-6)),
        "m1, input (batch)": (3000, pytest.approx(750e-6)),
        "m1, output (batch)": (600, pytest.approx(300e-6)),
        "e1, input (batch)": (50, pytest.approx(50e-6)),
    }


def test_the_pending_row_and_the_settled_row_both_say_batch(ledger: UsageLedger) -> None:
    entry = _row(9, "p1", "m1", 5, 0, batch=True)
    pending = UsageEntry(**{**entry.__dict__, "outcome": PENDING})
    assert ledger.admit(pending, replica_id="replica-1")
    assert [e.batch for e in ledger.entries(include_pending=True) if e.request_id == "req-9"] == [True]
    assert ledger.settle(UsageEntry(**{**entry.__dict__, "completion_tokens": 3}))
    assert [(e.batch, e.completion_tokens) for e in ledger.entries() if e.request_id == "req-9"] == [(True, 3)]


def test_spent_sums_batch_work_apart(ledger: UsageLedger) -> None:
    since = datetime.fromtimestamp(T0, timezone.utc)
    spent = ledger.spent(since=since, until=since + timedelta(days=1), organization_id="org-a")
    assert sorted(spent, key=lambda s: (s.project_id, s.model, s.batch)) == [
        Spend("p1", "m1", False, 100, 10),
        Spend("p1", "m1", True, 1000, 200),
        Spend("p2", "e1", True, 50, 0),
        Spend("p2", "m1", True, 2000, 400),
    ]


def test_without_any_multiplier_batch_work_costs_half(ledger: UsageLedger) -> None:
    prices = PriceTable({"m1": ModelPrice(input=1.0, output=2.0)})
    query = CostsQuery(start_time=T0, end_time=T0 + 86400, group_by=["project_id"])
    found = {r.project_id: r.amount.value for r in usage.costs(ledger, SCOPE, query, prices=prices, now=T0 + 86400).data[0].results}
    # p1: 100 × $1 + 10 × $2, and (1000 × $1 + 200 × $2) / 2; p2: (2000 × $1 + 400 × $2) / 2 (e1 has no price).
    assert found == {"p1": pytest.approx(820e-6), "p2": pytest.approx(1400e-6)}
