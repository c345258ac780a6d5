"""`organization.api_keys`: the one place keys are minted and revoked."""

from __future__ import annotations

from sqlalchemy import select

from modelhost.auth.keys import hash_secret
from modelhost.organization import Scope, api_keys, bootstrap
from modelhost.store import tenancy
from modelhost.store.schema import ApiKey, AuditLogEntry
from store.databases import Database


def _events(database: Database, resource_id: str) -> list[tuple[str, object]]:
    with database.sessions() as session:
        rows = session.scalars(select(AuditLogEntry).where(AuditLogEntry.resource_id == resource_id))
        return [(e.type, e.details) for e in rows]


def test_minting_stores_only_the_hash_and_records_the_scopes(database: Database) -> None:
    first = bootstrap.bootstrap(database.sessions)
    with database.sessions() as session:
        project = tenancy.default_project(session, first.organization_id)
        minted = api_keys.mint(
            session, Scope(first.organization_id), kind="project", name="k", user_id=first.user_id, project=project
        )
        session.commit()
        stored = session.get(ApiKey, minted.key.id)
        assert stored is not None and minted.secret.startswith("sk-proj-")
        assert stored.secret_hash == hash_secret(minted.secret) and minted.secret not in stored.redacted_value
        assert (stored.organization_id, stored.project_id) == (first.organization_id, first.project_id)
    assert _events(database, minted.key.id) == [
        ("api_key.created", {"id": minted.key.id, "data": {"scopes": ["api.model.request"]}})
    ]


def test_a_user_key_is_bound_to_no_organization_and_audited_nowhere(database: Database) -> None:
    first = bootstrap.bootstrap(database.sessions)
    with database.sessions() as session:
        minted = api_keys.mint(session, None, kind="user", name="u", user_id=first.user_id)
        api_keys.revoke(session, minted.key)
        session.commit()
        assert minted.key.organization_id is None and minted.key.revoked_at is not None
    assert _events(database, minted.key.id) == []


def test_revoking_twice_revokes_once_and_records_one_event(database: Database) -> None:
    first = bootstrap.bootstrap(database.sessions)
    scope = Scope(first.organization_id)
    with database.sessions() as session:
        key = api_keys.mint(session, scope, kind="admin", name="a", user_id=first.user_id).key
        api_keys.revoke(session, key)
        revoked_at = key.revoked_at
        api_keys.revoke(session, key)
        session.commit()
        assert revoked_at is not None and key.revoked_at == revoked_at
    assert [t for t, _ in _events(database, key.id)] == ["api_key.created", "api_key.deleted"]
