"""The one place API keys are minted and revoked, for the Administration API and the CLI alike.

Minting makes the secret (`auth.keys.new_secret`: 256 random bits), stores only its hash, and
records `api_key.created` with the key's scopes; revoking marks the key and records
`api_key.deleted`. Both run in the caller's transaction. Keys that go with their owner (a member
removed from a project or organization, a deleted service account) are revoked in bulk by
`store.tenancy.revoke_keys`, the same store write, without an event per key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from modelhost.auth.keys import new_secret
from modelhost.auth.policy import KeyKind, scopes_of
from modelhost.organization import audit
from modelhost.organization.common import Scope
from modelhost.store import tenancy
from modelhost.store.schema import ApiKey, Project


@dataclass(frozen=True)
class MintedKey:
    """A stored key and its secret: the only time the secret exists outside the client."""

    key: ApiKey
    secret: str


def mint(
    session: Session,
    scope: Scope | None,
    *,
    kind: str,
    name: str,
    user_id: str | None = None,
    service_account_id: str | None = None,
    project: Project | None = None,
    expires_at: datetime | None = None,
) -> MintedKey:
    """Store a new key of `kind` owned by the user or service account; audited in `scope`'s organization.

    `scope` is None only for a user key (``sk-…``), which is bound to no organization.
    """
    assert (scope is None) == (kind == KeyKind.USER), "user keys alone are bound to no organization"
    secret = new_secret(kind)
    key = tenancy.add_key(
        session,
        kind=kind,
        secret_hash=secret.secret_hash,
        redacted_value=secret.redacted_value,
        name=name,
        user_id=user_id,
        organization_id=scope.organization_id if scope else None,
        project_id=project.id if project else None,
        service_account_id=service_account_id,
        expires_at=expires_at,
    )
    if scope is not None:
        audit.record(
            session, scope, "api_key.created", key.id, {"data": {"scopes": sorted(scopes_of(kind))}}, project=project
        )
    return MintedKey(key, secret.secret)


def revoke(session: Session, key: ApiKey, scope: Scope | None = None) -> None:
    """Revoke `key` (refused everywhere within the key cache time); revoking twice changes nothing.

    The event goes to the key's organization, acted by `scope` (None: the CLI); a user key has none.
    """
    if key.revoked_at is not None:
        return
    tenancy.revoke_keys(session, key_id=key.id)
    session.refresh(key, ["revoked_at"])  # the bulk update leaves the loaded object as it was
    if key.organization_id is not None:
        project = session.get(Project, key.project_id) if key.project_id else None
        audit.record(session, scope or Scope(key.organization_id), "api_key.deleted", key.id, project=project)
