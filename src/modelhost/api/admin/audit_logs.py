"""`/v1/organization/audit_logs`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc, sessions
from modelhost.organization import Scope, audit
from modelhost.protocol.admin import AuditLogList, AuditLogQuery

router = APIRouter(
    prefix="/v1/organization/audit_logs", tags=["Audit logs"], dependencies=[Depends(admin_principal)], responses=ERRORS
)


@router.get("", response_model=AuditLogList, openapi_extra=query_doc(AuditLogQuery))
def list_audit_logs(request: Request, scope: Scope = Depends(admin_scope)) -> AuditLogList:
    return audit.list_events(sessions(request), scope, parse_query(request, AuditLogQuery))
