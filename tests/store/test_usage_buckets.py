"""Usage and costs in time buckets, summed by the database itself: SQLite and PostgreSQL agree."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from modelhost.config import ModelPrice
from modelhost.errors import InvalidRequest
from modelhost.limits import PriceTable
from modelhost.organization import Scope, usage
from modelhost.protocol.admin import CompletionsUsageQuery, CostsQuery, EmbeddingsUsageQuery
from modelhost.store import UsageEntry, UsageLedger
from store.databases import Database

T0 = 1_800_000_000 - 1_800_000_000 % 86400  # a UTC midnight
HOUR = 3600


def _row(n: int, at: int, org: str, project: str, model: str, operation: str, prompt: int, completion: int) -> UsageEntry:
    return UsageEntry(
        request_id=f"req-{n}",
        created_at=datetime.fromtimestamp(at, timezone.utc).replace(microsecond=250_000),
        organization_id=org,
        project_id=project,
        user_id=f"user-{project}",
        api_key_id=f"key_{project}",
        model=model,
        operation=operation,
        prompt_tokens=prompt,
        completion_tokens=completion,
        outcome="completed",
    )


@pytest.fixture
def ledger(database: Database) -> UsageLedger:
    ledger = UsageLedger(database.sessions)
    rows = [
        _row(1, T0 + 10, "org-a", "p1", "m1", "chat.completions", 5, 2),
        _row(2, T0 + HOUR - 1, "org-a", "p1", "m1", "completions", 3, 1),
        _row(3, T0 + HOUR, "org-a", "p2", "m2", "chat.completions", 7, 4),  # first second of bucket 1
        _row(4, T0 + HOUR + 100, "org-a", "p2", "e1", "embeddings", 11, 0),
        _row(5, T0 + 10, "org-b", "p9", "m1", "chat.completions", 1000, 1000),  # another organization
        _row(6, T0 + 3 * HOUR + 5, "org-a", "p1", "m1", "chat.completions", 2, 2),
    ]
    for row in rows:
        assert ledger.record(row)
    return ledger


SCOPE = Scope("org-a")


def test_buckets_sum_by_the_hour_and_group(ledger: UsageLedger) -> None:
    plain = ledger.bucketed(
        organization_id="org-a", operations=usage.COMPLETIONS_OPERATIONS, start=T0, end=T0 + 2 * HOUR, width=HOUR
    )
    assert sorted((g.bucket, g.requests, g.prompt_tokens, g.completion_tokens) for g in plain) == [(0, 2, 8, 3), (1, 1, 7, 4)]
    grouped = ledger.bucketed(
        organization_id="org-a", operations=None, start=T0, end=T0 + 4 * HOUR, width=HOUR,
        group_by=["project_id", "model"], project_ids=["p2"],
    )
    assert sorted((g.bucket, g.key, g.requests) for g in grouped) == [(1, ("p2", "e1"), 1), (1, ("p2", "m2"), 1)]


def test_completions_usage_pages_through_buckets(ledger: UsageLedger) -> None:
    query = CompletionsUsageQuery(start_time=T0, end_time=T0 + 4 * HOUR, bucket_width="1h", limit=2, group_by=["project_id"])
    first = usage.completions(ledger, SCOPE, query, now=T0 + 10 * HOUR)
    assert [(b.start_time, b.end_time) for b in first.data] == [(T0, T0 + HOUR), (T0 + HOUR, T0 + 2 * HOUR)]
    assert [[(r.project_id, r.input_tokens, r.output_tokens, r.num_model_requests) for r in b.results] for b in first.data] == [
        [("p1", 8, 3, 2)],
        [("p2", 7, 4, 1)],
    ]
    assert first.has_more and first.next_page
    second = usage.completions(ledger, SCOPE, query.model_copy(update={"page": first.next_page}), now=T0 + 10 * HOUR)
    assert [b.start_time for b in second.data] == [T0 + 2 * HOUR, T0 + 3 * HOUR]
    assert second.data[0].results == [] and second.data[1].results[0].input_tokens == 2
    assert not second.has_more and second.next_page is None

    whole = usage.completions(ledger, SCOPE, CompletionsUsageQuery(start_time=T0, bucket_width="1d"), now=T0 + 10 * HOUR)
    assert len(whole.data) == 1 and whole.data[0].end_time == T0 + 10 * HOUR  # the range ends now
    total = whole.data[0].results[0]
    assert (total.input_tokens, total.output_tokens, total.num_model_requests, total.model) == (17, 9, 4, None)
    batch = usage.completions(ledger, SCOPE, CompletionsUsageQuery(start_time=T0, batch=True), now=T0 + HOUR)
    assert batch.data[0].results == []


def test_embeddings_usage_counts_only_embeddings(ledger: UsageLedger) -> None:
    page = usage.embeddings(ledger, SCOPE, EmbeddingsUsageQuery(start_time=T0, group_by=["model"]), now=T0 + 5 * HOUR)
    assert [(r.model, r.input_tokens, r.num_model_requests) for r in page.data[0].results] == [("e1", 11, 1)]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 32}, "limit"),
        ({"bucket_width": "1h", "limit": 169}, "limit"),
        ({"end_time": T0}, "end_time"),
        ({"page": "page_bm9wZQ"}, "page"),
        ({"page": "page_" + "A" * 10}, "page"),
        ({"page": "nonsense"}, "page"),
    ],
)
def test_bad_usage_queries_name_the_parameter(ledger: UsageLedger, query: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        usage.completions(ledger, SCOPE, CompletionsUsageQuery.model_validate({"start_time": T0, **query}), now=T0 + HOUR)
    assert info.value.param == param


def test_costs_price_tokens_per_model_with_a_fallback(ledger: UsageLedger) -> None:
    prices = PriceTable({"m1": ModelPrice(input=1.0, output=2.0), "*": ModelPrice(input=0.5)})
    day = CostsQuery(start_time=T0, end_time=T0 + 86400)
    unpriced = usage.costs(ledger, SCOPE, day, prices=PriceTable(), now=T0 + 86400)
    assert [r.amount.value for r in unpriced.data[0].results] == [0.0]
    priced = usage.costs(ledger, SCOPE, day, prices=prices, now=T0 + 86400)
    # m1: (5+3+2) in at $1/M + (2+1+2) out at $2/M; m2 and e1 at the "*" price: (7+11) in at $0.5/M.
    assert priced.data[0].results[0].amount.value == pytest.approx((10 * 1 + 5 * 2 + 18 * 0.5) / 1e6)
    lines = usage.costs(
        ledger, SCOPE, day.model_copy(update={"group_by": ["line_item", "project_id"]}), prices=prices, now=T0 + 86400
    )
    found = {(r.line_item, r.project_id): (r.quantity, r.amount.value) for r in lines.data[0].results}
    assert found == {
        ("m1, input", "p1"): (10, pytest.approx(10e-6)),
        ("m1, output", "p1"): (5, pytest.approx(10e-6)),
        ("m2, input", "p2"): (7, pytest.approx(3.5e-6)),
        ("m2, output", "p2"): (4, 0.0),
        ("e1, input", "p2"): (11, pytest.approx(5.5e-6)),
    }
