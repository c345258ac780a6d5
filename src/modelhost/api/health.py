"""`/health`: liveness for load balancers, unauthenticated on purpose; the details for the operator only.

Without credentials the answer is ``200 {"status": "ok"}`` while every engine this process runs can
serve, else ``503`` with ``"status": "unavailable"`` and OpenAI's error envelope (code
`engine_unavailable`). Nothing else: model ids (also those hidden from a project), slots, queue
depths and replica circuits would tell anyone which models exist and how busy other tenants keep
them. With ``Authorization: Bearer <MODELHOST_METRICS_TOKEN>`` — the operator's token that opens
/metrics, never an API key — the same answer adds `engines` and `embedders` (each one's
`state()`). Any other `Authorization` gets the plain answer: a client passing its API key through
a balancer's health check is not refused, and learns nothing more.

An engine that forwards to upstream servers is never "down" here: its replicas' outages are
answered per request (503 `upstream_unavailable`), and taking every replica of modelhost out of a
balancer because a shared upstream failed would help nobody.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from modelhost.api.deps import app_state
from modelhost.api.metrics import presents_metrics_token
from modelhost.errors import ServiceUnavailable

router = APIRouter()


@router.get("/health", include_in_schema=False)
async def health(request: Request) -> JSONResponse:
    state = app_state(request)
    models = state.registry.all()
    engines = [m.engine for m in models if m.engine is not None]
    # `alive` is False once an in-process engine can no longer serve (its decode thread ended, vLLM errored).
    down = [e.model_id for e in engines if not getattr(e, "alive", True)]
    body: dict[str, object] = {"status": "unavailable" if down else "ok"}
    if down:
        body.update(ServiceUnavailable("A model engine of this server is not running.", code="engine_unavailable").body())
    token = state.settings.metrics_token
    if token is not None and presents_metrics_token(request, token.get_secret_value()):
        body["engines"] = [e.state() for e in engines]
        body["embedders"] = [m.embedder.state() for m in models if m.embedder is not None]
    return JSONResponse(body, status_code=503 if down else 200, headers={"Cache-Control": "no-store"})
