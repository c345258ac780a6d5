"""`Limiter`: a request's rate limits and quotas, taken in two steps before it runs and settled after.

``admit`` comes first, before any work on the request (template, tokenizer, schema compiler): in
one atomic step of the limit store it takes one request from the per-minute and per-day request
buckets and a concurrency lease of its key, so a request that then fails its planning (context
length, schema, template) has still been counted and its planning never runs beside more than
the key's concurrency cap. ``reserve`` then takes, in a second atomic step, what only the plan
knows: its token estimate (prompt + max_tokens × n) from the per-minute token bucket and the
estimate's cost from the organization's and the project's budgets; it takes no request again.
The buckets are the organization's (shared by all its projects) and, where the project has
tighter limits of its own, the project's too. ``settle`` corrects the estimate to what the
ledger records. Every refusal is an OpenAI-shaped 429; a store that fails is a 503.

Example, one chat request::

    admission = await limiter.admit(who, model="m", request_id="chatcmpl-1")   # 429 here: no planning
    try:
        plan = ...                                                               # may fail: 400
        held = await limiter.reserve(admission, request_id="chatcmpl-1", prompt_tokens=40, max_tokens=100, n=1)
    finally:
        await limiter.abandon(admission)   # frees the lease if no reservation took it over
    ...
    await limiter.settle(held, prompt_tokens=40, completion_tokens=31)          # releases the lease
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import anyio
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from modelhost.auth import Principal
from modelhost.config import ModelPrice
from modelhost.limits.base import (
    Adjustment,
    Budget,
    Bucket,
    Charge,
    ChargeState,
    Lease,
    LimitBackend,
    LimiterUnavailable,
    Outcome,
)
from modelhost.limits.durations import format_duration
from modelhost.limits.errors import EnqueuedTokenLimitExceeded, LimitsUnavailable, QuotaExceeded, RateLimitExceeded
from modelhost.limits.policy import MICRO, AppliedLimits, LimitPolicy, Quota, RateLimits, cost, current_period
from modelhost.limits.prices import PriceTable
from modelhost.store import UsageLedger
from modelhost.store import limits as stored_limits

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER = 120  # the official SDKs honour Retry-After up to two minutes
_BUCKETS = {
    "rpm": ("requests per min (RPM)", 60.0, "max_requests_per_1_minute"),
    "tpm": ("tokens per min (TPM)", 60.0, "max_tokens_per_1_minute"),
    "rpd": ("requests per day (RPD)", 86_400.0, "max_requests_per_1_day"),
}
ORGANIZATION_BUCKET = "organization"  # in a bucket's key where a project's id would be: all projects together


@dataclass(frozen=True)
class _Held:
    """One charge of an admission or a reservation and what it stands for."""

    charge: Charge
    name: str  # "rpm", "tpm", "rpd", "concurrency" or "quota"
    quota: Quota | None = None


@dataclass(frozen=True)
class EnqueueLimits:
    """``batch_1_day_max_input_tokens`` of an organization (all its projects' batches) and of a project (0: none)."""

    organization: int
    project: int

    def __bool__(self) -> bool:
        return bool(self.organization or self.project)

    def check(self, session: Session, principal: Principal, *, model: str, tokens: int, batch_id: str | None = None) -> None:
        """Raise `EnqueuedTokenLimitExceeded` if `tokens` more for `model` take the unfinished batches past a
        limit, summed in `session`: in the transaction that then stores the batch's tokens, with the
        organization's row locked first (`store.locks.lock_organization`), no other check passes between."""
        assert tokens >= 0, "a batch enqueues a whole number of tokens"
        if not self:
            return
        organization, project = stored_limits.enqueued_batch_tokens(
            session, principal.organization_id, principal.project_id, model, excluding=batch_id
        )
        self.judge(principal, model=model, tokens=tokens, organization=organization, project=project)

    def judge(self, principal: Principal, *, model: str, tokens: int, organization: int, project: int) -> None:
        """Raise `EnqueuedTokenLimitExceeded` if `tokens` more on what the organization's and the project's
        unfinished batches hold enqueued pass a limit."""
        for limit, enqueued, whose in ((self.organization, organization, "organization"), (self.project, project, "project")):
            if limit and enqueued + tokens > limit:
                where = principal.organization_id if whose == "organization" else principal.project_id
                raise EnqueuedTokenLimitExceeded(
                    f"Enqueued token limit reached for {model} in {whose} {where}. Limit: {limit:,} enqueued "
                    f"tokens, enqueued now: {enqueued:,}, this batch: {tokens:,}. Please try submitting your "
                    "requests in smaller batches, or once earlier batches have finished."
                )


@dataclass(eq=False)
class Admission:
    """A request let in before its planning: its request counted (RPM, RPD), its key's lease held.

    Made by `Limiter.admit`. The first `Limiter.reserve` with it takes the lease over (that
    reservation's settle or release frees it); until then `Limiter.abandon` frees it. Either
    way the lease is freed exactly once; the request stays counted.
    """

    principal: Principal
    model: str
    request_id: str
    applied: AppliedLimits  # the limits as `admit` read them; `reserve` applies the same
    quotas: tuple[Quota, ...]
    headers: dict[str, str]  # the x-ratelimit-*-requests response headers
    _lease: _Held | None  # None once a reservation took it over or it was freed

    def _take_lease(self) -> _Held | None:
        lease, self._lease = self._lease, None
        return lease


@dataclass(frozen=True)
class Reservation:
    """What `Limiter.reserve` took for one request; hand it back to `settle` (or `release`)."""

    principal: Principal
    model: str
    request_id: str
    estimate_tokens: int
    held: tuple[_Held, ...]
    headers: dict[str, str]  # the x-ratelimit-* response headers
    epochs: tuple[str, ...]  # per held charge: the generation of a budget's counter ("" otherwise)
    lease: _Held | None = None  # the admission's concurrency lease, freed with this reservation

    def _costs(self, prompt_tokens: int, completion_tokens: int, prices: PriceTable) -> list[int]:
        batch = self.principal.is_batch
        return [
            cost(h.quota.unit, self.model, prompt_tokens, completion_tokens, prices, batch=batch) if h.quota else 0
            for h in self.held
        ]


class Limiter:
    """Checks and settles rate limits and quotas in `backend`, with limits from `policy`.

    `ledger` is the source of a budget's starting value (usage so far in the period) whenever its
    counter does not exist yet: first use of a period, a restarted in-process store, a Redis that
    lost its data. `prices` is the price table in force: a models-file reload swaps in a new one whole.
    """

    def __init__(
        self,
        backend: LimitBackend,
        policy: LimitPolicy,
        ledger: UsageLedger,
        *,
        prices: Mapping[str, ModelPrice],  # a PriceTable, or any mapping to make one of
        key_prefix: str = "modelhost",
        lease_seconds: float = 600.0,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.backend = backend
        self.policy = policy
        self._ledger = ledger
        self.prices = prices if isinstance(prices, PriceTable) else PriceTable(prices)
        self._prefix = key_prefix
        self._lease_seconds = lease_seconds
        self._now = now

    def _key(self, principal: Principal, *parts: str) -> str:
        # The organization in braces is the Redis Cluster hash tag: one request's keys share a slot.
        return ":".join((self._prefix, "{" + principal.organization_id + "}", *parts))

    async def admit(self, principal: Principal, *, model: str, request_id: str) -> Admission:
        """Count the request (one from the per-minute and per-day request buckets) and take a lease
        of its key's concurrency, before any work on it; or raise `RateLimitExceeded` or
        `LimitsUnavailable` having taken nothing. `model` is the canonical id the buckets are per.

        A batch line (`Principal.is_batch`) takes none of these: batch work meets its quotas (in
        `reserve`) and, when its batch was created, the enqueued-token limit (`check_batch_enqueue`),
        never RPM, RPD or the key's concurrency (the batch runner bounds its own).
        """
        applied, quotas = await anyio.to_thread.run_sync(
            self.policy.lookup, principal.organization_id, principal.project_id, model
        )
        limits = applied.effective
        held = () if principal.is_batch else self._request_charges(principal, model, request_id, applied, limits)
        outcome = await self._acquire(principal, model, held)
        headers = _headers(held, outcome)
        if not outcome.allowed:
            raise self._refusal(principal, model, limits, held, outcome, headers)
        lease = next((h for h in held if h.name == "concurrency"), None)
        return Admission(principal, model, request_id, applied, quotas, headers, lease)

    async def abandon(self, admission: Admission) -> None:
        """Free the admission's lease unless a reservation took it over (or it was freed already);
        the request stays counted. Never raises."""
        lease = admission._take_lease()
        if lease is not None:
            await self._settle(admission.request_id, [Adjustment(lease.charge)], (), [])

    async def reserve(
        self, admission: Admission, *, request_id: str, prompt_tokens: int, max_tokens: int, n: int
    ) -> Reservation:
        """Take the admitted request's tokens and budget, or raise `RateLimitExceeded`,
        `QuotaExceeded` or `LimitsUnavailable` having taken nothing more.

        Every prompt of a multi-prompt completion reserves with the one admission: the request
        was counted once, by `admit`. The first reservation takes the admission's lease over.
        """
        principal, model = admission.principal, admission.model
        limits = admission.applied.effective
        estimate = prompt_tokens + max_tokens * n
        tpm = 0 if principal.is_batch else limits.max_tokens_per_1_minute  # batch work: quotas only
        if tpm and estimate > tpm:
            raise RateLimitExceeded(
                f"Request too large for {model} in organization {principal.organization_id} on tokens per min "
                f"(TPM): Limit {tpm}, Requested {estimate}. The input or output tokens must be reduced in order "
                "to run successfully (lower max_tokens or n, or shorten the prompt).",
                kind="tokens",
                headers={**admission.headers, "x-should-retry": "false"},
            )
        held = self._token_charges(
            principal, model, admission.applied, admission.quotas, estimate, prompt_tokens, max_tokens * n
        )
        outcome = await self._acquire(principal, model, held)
        headers = {**admission.headers, **_headers(held, outcome)}
        if not outcome.allowed:
            raise self._refusal(principal, model, limits, held, outcome, headers)
        epochs = tuple(state.epoch for state in outcome.states)  # one per held charge
        lease = admission._take_lease()  # only now: a refused reservation leaves it to `abandon`
        return Reservation(principal, model, request_id, estimate, held, headers, epochs, lease)

    async def check_batch_enqueue(
        self, principal: Principal, *, model: str, tokens: int, batch_id: str | None = None
    ) -> None:
        """Raise `EnqueuedTokenLimitExceeded` if a batch of `tokens` input tokens for `model` (the
        canonical id) would take the unfinished batches past ``batch_1_day_max_input_tokens``:
        the organization's (all its projects' batches together) or the project's own. Else return.

        Call it when the batch is created, before its lines run; `batch_id` leaves that batch's own
        row out of the sum if it is already stored. `LimitsUnavailable` if the store cannot be read.
        For the check and the write it allows in one transaction (the batch runner, across replicas):
        `batch_enqueue_limits` first, then `EnqueueLimits.check` in that transaction.
        """
        assert tokens >= 0, "a batch enqueues a whole number of tokens"
        limits = await self.batch_enqueue_limits(principal, model=model)
        if not limits:
            return
        organization, project = await anyio.to_thread.run_sync(
            functools.partial(
                self.policy.enqueued_batch_tokens,
                principal.organization_id,
                principal.project_id,
                model,
                excluding=batch_id,
            )
        )
        limits.judge(principal, model=model, tokens=tokens, organization=organization, project=project)

    async def batch_enqueue_limits(self, principal: Principal, *, model: str) -> EnqueueLimits:
        """The enqueued-token limits a batch of `principal`'s project for `model` meets (`LimitsUnavailable`
        if they cannot be read); false when there are none."""
        applied, _ = await anyio.to_thread.run_sync(
            self.policy.lookup, principal.organization_id, principal.project_id, model
        )
        return EnqueueLimits(applied.organization.batch_1_day_max_input_tokens, applied.project.batch_1_day_max_input_tokens)

    def _request_charges(
        self, principal: Principal, model: str, request_id: str, applied: AppliedLimits, limits: RateLimits
    ) -> tuple[_Held, ...]:
        held = [*self._buckets(principal, model, applied, "rpm", 1), *self._buckets(principal, model, applied, "rpd", 1)]
        concurrency = limits.max_concurrent_requests  # per key: the tighter of the two levels
        if concurrency:
            key = self._key(principal, "concurrent", principal.key_id)
            held.append(_Held(Lease(key, concurrency, request_id, self._lease_seconds), "concurrency"))
        return tuple(held)

    def _buckets(self, principal: Principal, model: str, applied: AppliedLimits, name: str, amount: int) -> list[_Held]:
        _, period, field = _BUCKETS[name]
        shared, own = getattr(applied.organization, field), getattr(applied.project, field)
        held: list[_Held] = []
        if shared:  # every project's requests count here: the organization as a whole
            key = self._key(principal, name, ORGANIZATION_BUCKET, model)
            held.append(_Held(Bucket(key, shared, period, amount), name))
        if own and (not shared or own < shared):  # one as large as the organization's adds nothing
            key = self._key(principal, name, principal.project_id, model)
            held.append(_Held(Bucket(key, own, period, amount), name))
        return held

    def _token_charges(
        self,
        principal: Principal,
        model: str,
        applied: AppliedLimits,
        quotas: tuple[Quota, ...],
        estimate: int,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> tuple[_Held, ...]:
        held = [] if principal.is_batch else self._buckets(principal, model, applied, "tpm", estimate)
        now = self._now()
        for quota in quotas:
            period = current_period(quota.period, now)
            key = self._key(principal, "quota", quota.scope, quota.scope_id, quota.unit, quota.period, period.label)
            ttl = (period.end - now).total_seconds() + 86_400  # outlives the period, for late settles
            amount = cost(quota.unit, model, prompt_tokens, completion_tokens, self.prices, batch=principal.is_batch)
            held.append(_Held(Budget(key, quota.hard_limit, amount, ttl), "quota", quota))
        return tuple(held)

    async def _acquire(self, principal: Principal, model: str, held: tuple[_Held, ...]) -> Outcome:
        charges = [h.charge for h in held]
        if not charges:
            return Outcome(())
        try:
            for _ in range(3):
                outcome = await self.backend.acquire(charges)
                if not outcome.missing:
                    return outcome
                for h in held:
                    if h.charge.key in outcome.missing:
                        assert isinstance(h.charge, Budget) and h.quota is not None
                        used = await anyio.to_thread.run_sync(self._used_so_far, principal, h.quota)
                        await self.backend.seed(h.charge.key, used, h.charge.ttl)
        except LimiterUnavailable as exc:
            logger.error("limit store unavailable: %s", exc)
            raise LimitsUnavailable() from exc
        logger.error("quota counters vanished right after being seeded; refusing the request")
        raise LimitsUnavailable()

    def _used_so_far(self, principal: Principal, quota: Quota) -> int:
        """What the ledger says this quota's scope spent in the current period."""
        period = current_period(quota.period, self._now())
        try:
            spent = self._ledger.spent(since=period.start, until=period.end, organization_id=principal.organization_id)
        except SQLAlchemyError as exc:
            raise LimitsUnavailable() from exc
        return sum(
            cost(quota.unit, s.model, s.prompt_tokens, s.completion_tokens, self.prices, batch=s.batch)
            for s in spent
            if quota.scope == "organization" or s.project_id == quota.scope_id
        )

    def _refusal(
        self,
        principal: Principal,
        model: str,
        limits: RateLimits,
        held: tuple[_Held, ...],
        outcome: Outcome,
        headers: dict[str, str],
    ) -> Exception:
        refused = [(h, s) for h, s in zip(held, outcome.states) if not s.allowed]
        for h, state in refused:
            if h.name == "quota":
                assert h.quota is not None and isinstance(h.charge, Budget)
                return QuotaExceeded(_quota_message(h.quota, h.charge, state, self._now()), headers=headers)
        org = principal.organization_id
        for h, state in refused:
            if h.name == "concurrency":
                return RateLimitExceeded(
                    f"Rate limit reached for {model} in organization {org} on concurrent requests per key: "
                    f"Limit {limits.max_concurrent_requests}, Used {int(state.level)}, Requested 1. "
                    "Please try again when one of this key's requests has finished.",
                    kind="requests",
                    headers={**headers, "retry-after": "1", "retry-after-ms": "1000"},
                )
        h, state = max(refused, key=lambda pair: pair[1].wait)
        assert isinstance(h.charge, Bucket)
        label = _BUCKETS[h.name][0]
        message = (
            f"Rate limit reached for {model} in organization {org} on {label}: Limit {h.charge.capacity}, "
            f"Used {h.charge.capacity - math.floor(state.level)}, Requested {h.charge.amount}. "
            f"Please try again in {format_duration(state.wait)}."
        )
        retry = {
            "retry-after": str(min(MAX_RETRY_AFTER, max(1, math.ceil(state.wait)))),
            "retry-after-ms": str(min(MAX_RETRY_AFTER * 1000, max(1, math.ceil(state.wait * 1000)))),
        }
        if state.wait > MAX_RETRY_AFTER:
            retry["x-should-retry"] = "false"  # an SDK retry within two minutes cannot succeed
        return RateLimitExceeded(message, kind="tokens" if h.name == "tpm" else "requests", headers={**headers, **retry})

    async def settle(self, reservation: Reservation, *, prompt_tokens: int, completion_tokens: int) -> None:
        """Correct the reservation to what the request used (the ledger's numbers) and free its
        lease; never raises. The request stays counted.

        If the store fails here, the estimate stays taken: tokens until the bucket refills,
        budget until the period ends, a lease until it expires (`lease_seconds`).
        """
        actual = prompt_tokens + completion_tokens
        costs = reservation._costs(prompt_tokens, completion_tokens, self.prices)
        adjustments: list[Adjustment] = []
        for h, spent, epoch in zip(reservation.held, costs, reservation.epochs):
            if h.name == "tpm":
                adjustments.append(Adjustment(h.charge, reservation.estimate_tokens - actual))
            elif h.name == "quota":
                assert isinstance(h.charge, Budget)
                adjustments.append(Adjustment(h.charge, spent - h.charge.amount, epoch))
        if reservation.lease is not None:
            adjustments.append(Adjustment(reservation.lease.charge))
        await self._settle(reservation.request_id, adjustments, reservation.held, costs)

    async def release(self, reservation: Reservation) -> None:
        """Give back the tokens, the budget and the lease: the request was refused before it ran
        (e.g. the engine was full). It stays counted as a request: its planning was done."""
        adjustments = [
            Adjustment(h.charge, -h.charge.amount, epoch)
            if isinstance(h.charge, Budget)
            else Adjustment(h.charge, getattr(h.charge, "amount", 0))
            for h, epoch in zip(reservation.held, reservation.epochs)
        ]
        if reservation.lease is not None:
            adjustments.append(Adjustment(reservation.lease.charge))
        await self._settle(reservation.request_id, adjustments, reservation.held, [0] * len(reservation.held))

    async def _settle(
        self, request_id: str, adjustments: list[Adjustment], held: tuple[_Held, ...], costs: list[int]
    ) -> None:
        if not adjustments:
            return
        try:
            values = await self.backend.settle(adjustments)
        except LimiterUnavailable as exc:
            logger.error("could not settle the limits of %s (%s); its estimate stays reserved", request_id, exc)
            return
        except Exception:  # the ledger row is written after this; a bug here must not lose it
            logger.exception("settling the limits of %s failed; its estimate stays reserved", request_id)
            return
        by_key = dict(zip((a.charge.key for a in adjustments), values))
        for h, spent in zip(held, costs):
            used = by_key.get(h.charge.key)
            soft = h.quota.soft_limit if h.quota else None
            if h.quota and soft is not None and used is not None and used >= soft > used - spent:
                logger.warning(
                    "%s %s passed its soft %s quota: %s of %s this %s",
                    h.quota.scope,
                    h.quota.scope_id,
                    h.quota.unit,
                    _amount(h.quota.unit, used),
                    _amount(h.quota.unit, soft),
                    h.quota.period,
                )

    async def close(self) -> None:
        await self.backend.close()


def _amount(unit: str, value: int) -> str:
    return f"${value / MICRO:.2f}" if unit == "usd" else f"{value} tokens"


def _quota_message(quota: Quota, budget: Budget, state: ChargeState, now: datetime) -> str:
    period = current_period(quota.period, now)
    assert quota.hard_limit is not None
    return (
        f"You exceeded your current quota: the {quota.scope} {quota.scope_id} may use "
        f"{_amount(quota.unit, quota.hard_limit)} per {quota.period}, has used {_amount(quota.unit, int(state.level))}, "
        f"and this request may need {_amount(quota.unit, budget.amount)}. The quota resets at "
        f"{period.end.strftime('%Y-%m-%dT%H:%M:%SZ')}; an operator can raise it with `modelhost quotas set`."
    )


def _headers(held: tuple[_Held, ...], outcome: Outcome) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the per-minute request and token limits that are set.

    Where both the organization's and the project's bucket count, the one with less left speaks.
    """
    headers: dict[str, str] = {}
    closest: dict[str, tuple[Bucket, float]] = {}
    for h, state in zip(held, outcome.states):
        if h.name not in ("rpm", "tpm") or not isinstance(h.charge, Bucket):
            continue
        level = state.level
        if state.allowed and not outcome.allowed:
            level += h.charge.amount  # a refused request took nothing
        if h.name not in closest or level < closest[h.name][1]:
            closest[h.name] = (h.charge, level)
    for name, (bucket, level) in closest.items():
        kind = "requests" if name == "rpm" else "tokens"
        rate = bucket.capacity / bucket.period
        headers[f"x-ratelimit-limit-{kind}"] = str(bucket.capacity)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(level)))
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(max(0.0, (bucket.capacity - level) / rate))
    return headers
