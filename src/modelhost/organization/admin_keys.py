"""`/v1/organization/admin_api_keys`: keys for the Administration API, owned by organization owners."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import policy
from modelhost.auth.policy import NO_ROLE, KeyKind
from modelhost.errors import InvalidRequest
from modelhost.organization import api_keys
from modelhost.organization.common import Scope, listing, not_found, transaction, unix, unix_now
from modelhost.protocol.admin import (
    AdminApiKey,
    AdminApiKeyCreated,
    AdminApiKeyCreateRequest,
    AdminApiKeyDeleted,
    AdminApiKeyList,
    AdminApiKeyListQuery,
    AdminApiKeyOwner,
)
from modelhost.store import tenancy
from modelhost.store.schema import ApiKey


def _wire(session: Session, key: ApiKey) -> AdminApiKey:
    assert key.user_id and key.organization_id, "admin keys belong to a user of an organization"
    user = tenancy.get_user(session, key.user_id)
    member = tenancy.membership(session, key.user_id, key.organization_id)
    assert user is not None
    return AdminApiKey(
        id=key.id,
        name=key.name,
        redacted_value=key.redacted_value,
        created_at=unix_now(key.created_at),
        expires_at=unix(key.expires_at),
        last_used_at=unix(key.last_used_at),
        owner=AdminApiKeyOwner(
            id=user.id, name=user.name, created_at=unix_now(user.created_at), role=member.role if member else NO_ROLE
        ),
    )


def create(
    sessions: sessionmaker[Session], scope: Scope, body: AdminApiKeyCreateRequest, *, owner_id: str | None = None
) -> AdminApiKeyCreated:
    """A new admin key owned by `owner_id` (default: the caller's user); the secret is in the answer only."""
    owner = owner_id or (scope.principal.user_id if scope.principal else None)
    assert owner is not None, "the CLI names the owner"
    with transaction(sessions) as session:
        member = tenancy.membership(session, owner, scope.organization_id)
        if not policy.may_hold_admin_key(member.role if member else None):
            raise InvalidRequest(f"Admin keys belong to owners of the organization; user {owner} is not one.")
        expires = (
            tenancy.utcnow() + timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
        )
        minted = api_keys.mint(session, scope, kind=KeyKind.ADMIN, name=body.name, user_id=owner, expires_at=expires)
        return AdminApiKeyCreated(**_wire(session, minted.key).model_dump(), value=minted.secret)


def list_keys(sessions: sessionmaker[Session], scope: Scope, query: AdminApiKeyListQuery) -> AdminApiKeyList:
    with transaction(sessions) as session:
        page = tenancy.list_admin_keys(
            session, scope.organization_id, limit=query.limit, after=query.after, descending=query.order == "desc"
        )
        return listing(AdminApiKeyList, [_wire(session, k) for k in page.items], page.has_more)


def _live(session: Session, scope: Scope, key_id: str) -> ApiKey:
    key = tenancy.live_key(session, key_id, organization_id=scope.organization_id, kinds=(KeyKind.ADMIN,))
    if key is None:
        raise not_found("admin API key", key_id)
    return key


def get(sessions: sessionmaker[Session], scope: Scope, key_id: str) -> AdminApiKey:
    with transaction(sessions) as session:
        return _wire(session, _live(session, scope, key_id))


def delete(sessions: sessionmaker[Session], scope: Scope, key_id: str) -> AdminApiKeyDeleted:
    """Revoke the key: refused everywhere within the key cache time."""
    with transaction(sessions) as session:
        key = _live(session, scope, key_id)
        api_keys.revoke(session, key, scope)
        return AdminApiKeyDeleted(id=key.id)
