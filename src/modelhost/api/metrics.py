"""`GET /metrics`: Prometheus text format, only for the bearer of `MODELHOST_METRICS_TOKEN`.

Without a configured token the route answers 404 like any unknown URL, so a default install
publishes nothing about itself. With one, anything but exactly ``Authorization: Bearer <token>``
is a 401 (compared in constant time). The token is not an API key: a scraper holding it can read
counters (and /health's details), never call the API, and an API key never opens /metrics.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelhost.api.deps import app_state
from modelhost.errors import AuthenticationError, RouteError

router = APIRouter()


def presents_metrics_token(request: Request, token: str) -> bool:
    """Whether the request carries exactly ``Authorization: Bearer <token>`` (compared in constant time)."""
    presented = request.headers.getlist("authorization")
    if len(presented) != 1:
        return False
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest(presented[0].strip().encode("latin-1"), expected)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state = app_state(request)
    token = state.settings.metrics_token
    if token is None:
        raise RouteError(f"Invalid URL ({request.method} {request.url.path})", 404)
    if not presents_metrics_token(request, token.get_secret_value()):
        raise AuthenticationError(
            "GET /metrics needs Authorization: Bearer <MODELHOST_METRICS_TOKEN> (the metrics token, not an API key).",
            code="invalid_metrics_token",
        )
    observed = state.observability.metrics
    return Response(observed.exposition(), media_type=observed.content_type)
