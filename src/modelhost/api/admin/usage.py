"""`/v1/organization/usage/completions`, `/usage/embeddings` and `/costs`: the ledger in time buckets."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc
from modelhost.api.deps import app_state
from modelhost.organization import Scope, usage
from modelhost.protocol.admin import CompletionsUsageQuery, CostsQuery, EmbeddingsUsageQuery, UsagePage

def _now() -> int:
    """The default `end_time`: the end of the current second, so what was just recorded is counted."""
    return int(time.time()) + 1


router = APIRouter(
    prefix="/v1/organization", tags=["Usage"], dependencies=[Depends(admin_principal)], responses=ERRORS
)


@router.get("/usage/completions", response_model=UsagePage, openapi_extra=query_doc(CompletionsUsageQuery))
def usage_completions(request: Request, scope: Scope = Depends(admin_scope)) -> UsagePage:
    query = parse_query(request, CompletionsUsageQuery)
    return usage.completions(app_state(request).ledger, scope, query, now=_now())


@router.get("/usage/embeddings", response_model=UsagePage, openapi_extra=query_doc(EmbeddingsUsageQuery))
def usage_embeddings(request: Request, scope: Scope = Depends(admin_scope)) -> UsagePage:
    query = parse_query(request, EmbeddingsUsageQuery)
    return usage.embeddings(app_state(request).ledger, scope, query, now=_now())


@router.get("/costs", response_model=UsagePage, openapi_extra=query_doc(CostsQuery))
def costs(request: Request, scope: Scope = Depends(admin_scope)) -> UsagePage:
    state = app_state(request)
    query = parse_query(request, CostsQuery)
    return usage.costs(state.ledger, scope, query, prices=state.limiter.prices, now=_now())
