"""The Administration and Usage APIs (`/v1/organization/…`), one router per resource, admin keys only."""

from fastapi import APIRouter

from modelhost.api.admin import (
    admin_api_keys,
    audit_logs,
    invites,
    model_permissions,
    project_api_keys,
    project_users,
    projects,
    rate_limits,
    service_accounts,
    usage,
    users,
)

router = APIRouter()
for _module in (
    admin_api_keys,
    users,
    invites,
    projects,
    project_users,
    service_accounts,
    project_api_keys,
    model_permissions,
    rate_limits,
    usage,
    audit_logs,
):
    router.include_router(_module.router)

__all__ = ["router"]
