"""The Administration and Usage APIs (`/v1/organization/…`), one router per resource, admin keys only."""

from fastapi import APIRouter, Depends

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
from modelhost.api.admin.deps import stored_path_params

router = APIRouter(dependencies=[Depends(stored_path_params)])  # the key is checked before, by the middleware
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
