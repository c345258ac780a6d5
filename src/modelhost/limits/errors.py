"""The errors a limit check answers with, in OpenAI's shapes."""

from __future__ import annotations

from modelhost.errors import APIError, ServiceUnavailable


class RateLimitExceeded(APIError):
    """Too many requests or tokens in the last minute or day, or too many at once: retry later."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str]) -> None:
        assert kind in ("requests", "tokens"), "OpenAI types rate-limit errors 'requests' or 'tokens'"
        super().__init__(message, headers=headers)
        self.type = kind


class QuotaExceeded(APIError):
    """The organization's or project's budget for this period is spent: retrying will not help."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={**(headers or {}), "x-should-retry": "false"})


class EnqueuedTokenLimitExceeded(APIError):
    """A new batch would hold more input tokens enqueued for a model than its limit allows (OpenAI's
    batch queue limit): submit it once earlier batches have finished, or in smaller batches."""

    status = 429
    type = "tokens"
    code = "token_limit_exceeded"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"x-should-retry": "false"})  # retrying at once cannot help


class LimitsUnavailable(ServiceUnavailable):
    """The rate-limit and quota counters or settings cannot be reached, so nothing is let through."""

    def __init__(self) -> None:
        super().__init__(
            "Rate limits and quotas cannot be checked right now (their store is unreachable), so the "
            "request was not run. Retry shortly; if it persists, the operator should check Redis "
            "(MODELHOST_REDIS_URL) and the database.",
            code="limits_unavailable",
            headers={"Retry-After": "1"},
        )
