"""`/v1/organization/usage/{completions,embeddings}` and `/v1/organization/costs`, from the usage ledger.

Time is cut into buckets of `bucket_width` counted from `start_time`; the last one ends at
`end_time` (default: the end of the current second). A page holds `limit` buckets, empty ones
included, and `next_page` names the first bucket of the next page. Every settled ledger row counts
(completed, cancelled or failed generations all used the tokens they report, and `interrupted` ones,
left by a replica that died, the tokens known when it did); a row still `pending` (in flight)
counts once it is settled, so no request is counted twice. A row says whether it was a line of a
batch (`batch`: the completions usage filter and group_by), and Costs prices those at the batch
multiplier (`PriceTable.price_of(model, batch=True)`) as line items of their own
(``"MODEL, input (batch)"``). `service_tier` is always "default".
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union

from modelhost.errors import InvalidRequest
from modelhost.limits.prices import PriceTable
from modelhost.organization.common import Scope
from modelhost.protocol.admin import (
    CompletionsUsageQuery,
    CostAmount,
    CostsQuery,
    CostsResult,
    EmbeddingsUsageQuery,
    UsageBucket,
    UsageCompletionsResult,
    UsageEmbeddingsResult,
    UsagePage,
)
from modelhost.store.ledger import UsageGroup, UsageLedger

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
#: (default, maximum) buckets per page, as OpenAI documents them.
BUCKET_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
COSTS_LIMITS = (7, 180)
COMPLETIONS_OPERATIONS = ("chat.completions", "completions", "responses")  # OpenAI counts responses as completions
EMBEDDINGS_OPERATIONS = ("embeddings",)
_LEDGER_GROUPS = ("project_id", "user_id", "api_key_id", "model")

Result = Union[UsageCompletionsResult, UsageEmbeddingsResult, CostsResult]


@dataclass(frozen=True)
class _Window:
    """The buckets of one page: indexes [first, first + count) of `total`, each `width` seconds from `start`."""

    start: int
    end: int
    width: int
    first: int
    count: int
    total: int

    def bucket_start(self, index: int) -> int:
        return self.start + index * self.width

    def page_range(self) -> tuple[int, int]:
        return self.bucket_start(self.first), min(self.end, self.bucket_start(self.first + self.count))


def _page_token(moment: int) -> str:
    return "page_" + base64.urlsafe_b64encode(str(moment).encode()).decode().rstrip("=")


def _page_start(token: str) -> int | None:
    if not token.startswith("page_"):
        return None
    body = token[5:]
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(text) if text.isdigit() and len(text) <= 12 else None


def _window(
    start: int, end_time: int | None, width_name: str, limit: int | None, limits: tuple[int, int], page: str | None, now: int
) -> _Window:
    default, most = limits
    chosen = default if limit is None else limit
    if not 1 <= chosen <= most:
        raise InvalidRequest(
            f"Invalid value for 'limit': with bucket_width={width_name} it is 1 to {most}.", param="limit", code="invalid_value"
        )
    if end_time is not None and end_time <= start:
        raise InvalidRequest("Invalid value for 'end_time': it must be after start_time.", param="end_time", code="invalid_value")
    width = WIDTHS[width_name]
    end = end_time if end_time is not None else now
    total = max(0, -(-(end - start) // width))  # whole buckets, the last one maybe cut short
    first = 0
    if page is not None:
        moment = _page_start(page)
        if moment is None or moment < start or (moment - start) % width or (moment - start) // width >= total:
            raise InvalidRequest(
                "Invalid value for 'page': pass the next_page of a previous answer to the same query.",
                param="page",
                code="invalid_value",
            )
        first = (moment - start) // width
    return _Window(start, end, width, first, min(chosen, total - first), total)


def _page(window: _Window, results: Mapping[int, list[Result]]) -> UsagePage:
    buckets = []
    for index in range(window.first, window.first + window.count):
        begins = window.bucket_start(index)
        in_bucket = sorted(results.get(index, []), key=lambda r: [str(v) for v in r.model_dump().values()])
        buckets.append(UsageBucket(start_time=begins, end_time=min(begins + window.width, window.end), results=in_bucket))
    following = window.first + window.count
    has_more = following < window.total
    return UsagePage(data=buckets, has_more=has_more, next_page=_page_token(window.bucket_start(following)) if has_more else None)


def _groups(
    ledger: UsageLedger,
    scope: Scope,
    window: _Window,
    operations: tuple[str, ...] | None,
    group_by: Sequence[str],
    batch: bool | None = None,
    **filters: Sequence[str],
) -> list[UsageGroup]:
    if window.count == 0:
        return []
    since, until = window.page_range()
    groups = ledger.bucketed(
        organization_id=scope.organization_id,
        operations=operations,
        start=since,
        end=until,
        width=window.width,
        group_by=group_by,
        batch=batch,
        **filters,
    )
    # Indexes from the ledger count from the page's first bucket.
    return [UsageGroup(g.bucket + window.first, g.key, g.requests, g.prompt_tokens, g.completion_tokens) for g in groups]


def completions(ledger: UsageLedger, scope: Scope, query: CompletionsUsageQuery, *, now: int) -> UsagePage:
    window = _window(
        query.start_time, query.end_time, query.bucket_width, query.limit, BUCKET_LIMITS[query.bucket_width], query.page, now
    )
    grouped: list[str] = [g for g in (*_LEDGER_GROUPS, "batch") if g in query.group_by]
    found = _groups(
        ledger, scope, window, COMPLETIONS_OPERATIONS, grouped, batch=query.batch,
        project_ids=query.project_ids, user_ids=query.user_ids, api_key_ids=query.api_key_ids, models=query.models,
    )
    results: dict[int, list[Result]] = defaultdict(list)
    for g in found:
        results[g.bucket].append(
            UsageCompletionsResult.model_validate(
                {
                    "input_tokens": g.prompt_tokens,
                    "output_tokens": g.completion_tokens,
                    "num_model_requests": g.requests,
                    "service_tier": "default" if "service_tier" in query.group_by else None,
                    **dict(zip(grouped, g.key)),
                }
            )
        )
    return _page(window, results)


def embeddings(ledger: UsageLedger, scope: Scope, query: EmbeddingsUsageQuery, *, now: int) -> UsagePage:
    window = _window(
        query.start_time, query.end_time, query.bucket_width, query.limit, BUCKET_LIMITS[query.bucket_width], query.page, now
    )
    grouped: list[str] = [g for g in _LEDGER_GROUPS if g in query.group_by]
    found = _groups(
        ledger, scope, window, EMBEDDINGS_OPERATIONS, grouped,
        project_ids=query.project_ids, user_ids=query.user_ids, api_key_ids=query.api_key_ids, models=query.models,
    )
    results: dict[int, list[Result]] = defaultdict(list)
    for g in found:
        results[g.bucket].append(
            UsageEmbeddingsResult.model_validate(
                {"input_tokens": g.prompt_tokens, "num_model_requests": g.requests, **dict(zip(grouped, g.key))}
            )
        )
    return _page(window, results)


def costs(
    ledger: UsageLedger, scope: Scope, query: CostsQuery, *, prices: PriceTable, now: int
) -> UsagePage:
    """What the usage cost at the configured per-model prices (USD per 1M tokens; "*" prices the rest, else 0)."""
    window = _window(query.start_time, query.end_time, query.bucket_width, query.limit, COSTS_LIMITS, query.page, now)
    grouped: list[str] = [g for g in ("project_id", "user_id", "api_key_id") if g in query.group_by]
    by_line = "line_item" in query.group_by
    found = _groups(
        ledger, scope, window, None, ["model", "batch", *grouped], project_ids=query.project_ids, api_key_ids=query.api_key_ids
    )
    # (bucket, grouped values, line item or None) -> [amount, tokens]
    sums: dict[tuple[int, tuple[str | bool | None, ...], str | None], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for g in found:
        model, batch, rest = str(g.key[0]), bool(g.key[1]), g.key[2:]
        price = prices.price_of(model, batch=batch)  # batch work at the batch multiplier
        for side, tokens, per_million in (("input", g.prompt_tokens, price.input), ("output", g.completion_tokens, price.output)):
            if by_line and tokens == 0:
                continue
            line = f"{model}, {side}{' (batch)' if batch else ''}" if by_line else None
            entry = sums[(g.bucket, rest, line)]
            entry[0] += tokens * per_million / 1_000_000
            entry[1] += tokens
    results: dict[int, list[Result]] = defaultdict(list)
    for (bucket, rest, line), (amount, quantity) in sums.items():
        results[bucket].append(
            CostsResult.model_validate(
                {
                    "amount": CostAmount(value=round(amount, 12)),
                    "line_item": line,
                    "quantity": quantity if by_line else None,
                    "quantity_unit": "tokens" if by_line else None,
                    **dict(zip(grouped, rest)),
                }
            )
        )
    return _page(window, results)
