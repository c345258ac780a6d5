"""`/v1/organization/projects/{project_id}/rate_limits`: a project's limits per model, list and modify."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc, sessions
from modelhost.api.deps import app_state
from modelhost.limits.service import LimitSettings
from modelhost.organization import Scope, model_permissions
from modelhost.organization.common import listed
from modelhost.protocol.admin.rate_limits import (
    ProjectRateLimit,
    ProjectRateLimitList,
    ProjectRateLimitListQuery,
    ProjectRateLimitUpdateRequest,
)

logger = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1/organization/projects/{project_id}/rate_limits",
    tags=["Projects"],
    dependencies=[Depends(admin_principal)],
    responses=ERRORS,
)


def _service(request: Request) -> LimitSettings:
    """Limits of the models the project may use: a model hidden from it has no `rl-MODEL` here (404)."""
    state = app_state(request)
    registry = state.registry

    def usable(session: Session, organization_id: str, project_id: str) -> list[str]:
        return model_permissions.usable(session, organization_id, project_id, registry)

    models = [m.id for m in registry.all()]
    return LimitSettings(sessions(request), state.settings, models, usable=usable, prices=state.limiter.prices)


@router.get("", response_model=ProjectRateLimitList, openapi_extra=query_doc(ProjectRateLimitListQuery))
async def list_project_rate_limits(
    project_id: str, request: Request, scope: Scope = Depends(admin_scope)
) -> ProjectRateLimitList:
    query = parse_query(request, ProjectRateLimitListQuery)
    items = await run_in_threadpool(_service(request).project_rate_limits, scope.organization_id, project_id)
    wire = [ProjectRateLimit.model_validate(item) for item in items]
    return listed(ProjectRateLimitList, wire, limit=query.limit, after=query.after, before=query.before)


@router.post("/{rate_limit_id}", response_model=ProjectRateLimit)
async def modify_project_rate_limit(
    project_id: str,
    rate_limit_id: str,
    body: ProjectRateLimitUpdateRequest,
    request: Request,
    scope: Scope = Depends(admin_scope),
) -> ProjectRateLimit:
    changes = body.model_dump(exclude_none=True, exclude=set(body.model_extra or {}))
    ignored = sorted({"max_images_per_1_minute", "max_audio_megabytes_per_1_minute"} & set(changes))
    if ignored or body.ignored_fields():
        logger.info("rate_limits: ignoring %s (not served here)", ", ".join(ignored + body.ignored_fields()))
    updated = await run_in_threadpool(_service(request).update_project_rate_limit, scope, project_id, rate_limit_id, changes)
    return ProjectRateLimit.model_validate(updated)
