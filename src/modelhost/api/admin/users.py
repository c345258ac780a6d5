"""`/v1/organization/users`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import ERRORS, admin_principal, admin_scope, parse_query, query_doc, sessions
from modelhost.organization import Scope, users
from modelhost.protocol.admin import (
    OrganizationUser,
    OrganizationUserList,
    UserDeleted,
    UserListQuery,
    UserRoleUpdateRequest,
)

router = APIRouter(
    prefix="/v1/organization/users", tags=["Users"], dependencies=[Depends(admin_principal)], responses=ERRORS
)


@router.get("", response_model=OrganizationUserList, openapi_extra=query_doc(UserListQuery))
def list_users(request: Request, scope: Scope = Depends(admin_scope)) -> OrganizationUserList:
    return users.list_users(sessions(request), scope, parse_query(request, UserListQuery))


@router.get("/{user_id}", response_model=OrganizationUser)
def retrieve_user(user_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> OrganizationUser:
    return users.get(sessions(request), scope, user_id)


@router.post("/{user_id}", response_model=OrganizationUser)
def modify_user(
    user_id: str, body: UserRoleUpdateRequest, request: Request, scope: Scope = Depends(admin_scope)
) -> OrganizationUser:
    return users.update(sessions(request), scope, user_id, body)


@router.delete("/{user_id}", response_model=UserDeleted)
def delete_user(user_id: str, request: Request, scope: Scope = Depends(admin_scope)) -> UserDeleted:
    return users.delete(sessions(request), scope, user_id)
