"""`/health`: unauthenticated on purpose (load balancers call it); says only whether we can serve."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from modelhost.api.deps import app_state

router = APIRouter()


@router.get("/health", include_in_schema=False)
async def health(request: Request) -> JSONResponse:
    state = app_state(request)
    models = state.registry.all()
    engines = [m.engine.state() for m in models if m.engine is not None]
    embedders = [m.embedder.state() for m in models if m.embedder is not None]
    return JSONResponse({"status": "ok", "engines": engines, "embedders": embedders})
