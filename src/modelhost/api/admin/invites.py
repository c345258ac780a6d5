"""`/v1/organization/invites` (accepting one is `modelhost invites accept`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc, sessions
from modelhost.organization import Scope, invites
from modelhost.protocol.admin import Invite, InviteDeleted, InviteList, InviteRequest, ListQuery

router = APIRouter(
    prefix="/v1/organization/invites", tags=["Invites"], dependencies=[Depends(admin_principal)], responses=ERRORS
)


@router.get("", response_model=InviteList, openapi_extra=query_doc(ListQuery))
def list_invites(request: Request, scope: Scope = Depends(admin_scope)) -> InviteList:
    return invites.list_invites(sessions(request), scope, parse_query(request, ListQuery))


@router.post("", response_model=Invite)
def invite_user(body: InviteRequest, request: Request, scope: Scope = Depends(admin_scope)) -> Invite:
    return invites.create(sessions(request), scope, body)


@router.get("/{invite_id}", response_model=Invite)
def retrieve_invite(invite_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> Invite:
    return invites.get(sessions(request), scope, invite_id)


@router.delete("/{invite_id}", response_model=InviteDeleted)
def delete_invite(invite_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> InviteDeleted:
    return invites.delete(sessions(request), scope, invite_id)
