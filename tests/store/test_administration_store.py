"""The Administration API's store and service code, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from modelhost.auth import Authenticator
from modelhost.errors import AuthenticationError, InvalidRequest, NotFound, PermissionDenied
from modelhost.organization import Scope, admin_keys, audit, bootstrap, invites, operations, project_keys, project_users, projects, service_accounts, users
from modelhost.protocol.admin import (
    AdminApiKeyCreateRequest,
    AuditLogQuery,
    InviteRequest,
    ListQuery,
    ProjectApiKeyListQuery,
    ProjectCreateRequest,
    ProjectListQuery,
    ProjectUserCreateRequest,
    ServiceAccountCreateRequest,
    UserListQuery,
    UserRoleUpdateRequest,
)
from modelhost.store import migrate, open_engine, session_factory, tenancy
from modelhost.store.db import _MIGRATIONS
from modelhost.store.schema import Invite
from store.databases import Database, database_url, drop_schema

BEARER = "Bearer {}".format


def _first(db: Database) -> bootstrap.Bootstrap:
    return bootstrap.bootstrap(db.sessions)


def _auth(db: Database) -> Authenticator:
    return Authenticator(db.sessions, cache_seconds=0)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_upgrading_from_0001_keeps_existing_keys(kind: str, tmp_path: Path) -> None:
    url, schema = database_url(kind, tmp_path)
    engine = open_engine(url)
    try:
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
        secret_hash = hashlib.sha256(b"sk-proj-old").hexdigest()
        now = datetime.now(timezone.utc)
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO organizations VALUES ('org-1', 'Old', :t)"), {"t": now})
            connection.execute(text("INSERT INTO users VALUES ('user-1', 'a@b.c', 'A', 'org-1', :t)"), {"t": now})
            connection.execute(
                text("INSERT INTO projects VALUES ('proj_1', 'org-1', 'Default', :y, 'active', :t, NULL)"),
                {"y": True, "t": now},
            )
            connection.execute(
                text(
                    "INSERT INTO api_keys VALUES ('key_1', 'project', :h, 'sk-proj-****-old', 'old', 'user-1', "
                    "'org-1', 'proj_1', :t, NULL, NULL)"
                ),
                {"h": secret_hash, "t": now},
            )
        migrate(engine)
        with session_factory(engine)() as session:
            record = tenancy.key_by_hash(session, secret_hash)
            assert record is not None and record.user_id == "user-1" and record.project_id == "proj_1"
            assert record.service_account_id is None and record.expires_at is None
    finally:
        engine.dispose()
        drop_schema(schema)


def test_project_listing_pages_by_cursor_within_the_organization(database: Database) -> None:
    first = _first(database)
    scope = Scope(first.organization_id)
    made = [projects.create(database.sessions, scope, ProjectCreateRequest(name=f"p{i}")).id for i in range(5)]
    seen, after = [], None
    while True:
        page = projects.list_projects(database.sessions, scope, ProjectListQuery(limit=2, after=after))
        seen += [p.id for p in page.data]
        assert page.first_id == page.data[0].id and page.last_id == page.data[-1].id
        if not page.has_more:
            break
        after = page.last_id
    assert seen == [first.project_id, *made]

    other = operations.create_organization(database.sessions, "Other")
    with pytest.raises(InvalidRequest) as info:  # a cursor of another organization is no cursor here
        projects.list_projects(database.sessions, scope, ProjectListQuery(after=str(other["default_project"])))
    assert info.value.param == "after"
    with pytest.raises(NotFound):
        projects.get(database.sessions, scope, str(other["default_project"]))
    with pytest.raises(NotFound):
        projects.archive(database.sessions, scope, str(other["default_project"]))


def test_admin_keys_work_only_on_admin_routes_and_end_with_the_owner_role(database: Database) -> None:
    first = _first(database)
    scope = Scope(first.organization_id)
    created = admin_keys.create(database.sessions, scope, AdminApiKeyCreateRequest(name="ops"), owner_id=first.user_id)
    assert created.value.startswith("sk-admin-") and created.redacted_value.endswith(created.value[-4:])
    auth = _auth(database)
    who = auth.authenticate_admin([BEARER(created.value)], None)
    assert who.is_admin and who.organization_id == first.organization_id and who.key_kind == "admin"
    with pytest.raises(PermissionDenied):
        auth.authenticate([BEARER(created.value)], None, None)
    project_key = operations.create_key(database.sessions, kind="project")
    with pytest.raises(PermissionDenied):
        auth.authenticate_admin([BEARER(str(project_key["secret"]))], None)
    reader = operations.create_user(database.sessions, "reader@example.com")
    operations.add_member(database.sessions, str(reader["id"]), first.organization_id, "reader")
    with pytest.raises(InvalidRequest):  # admin keys belong to owners
        operations.create_key(database.sessions, user=str(reader["id"]), kind="admin")

    # A second owner keeps the organization owned while the first is demoted: the key stops working.
    second = operations.create_user(database.sessions, "second@example.com")
    operations.add_member(database.sessions, str(second["id"]), first.organization_id, "owner")
    users.update(database.sessions, scope, first.user_id, UserRoleUpdateRequest(role="reader"))
    with pytest.raises(AuthenticationError):
        auth.authenticate_admin([BEARER(created.value)], None)
    users.update(database.sessions, scope, first.user_id, UserRoleUpdateRequest(role="owner"))
    assert auth.authenticate_admin([BEARER(created.value)], None).key_id == created.id

    admin_keys.delete(database.sessions, scope, created.id)
    with pytest.raises(AuthenticationError):
        auth.authenticate_admin([BEARER(created.value)], None)
    with pytest.raises(NotFound):
        admin_keys.get(database.sessions, scope, created.id)


def test_an_expired_admin_key_is_refused(database: Database) -> None:
    first = _first(database)
    created = admin_keys.create(
        database.sessions, Scope(first.organization_id), AdminApiKeyCreateRequest(name="short", expires_in_seconds=60),
        owner_id=first.user_id,
    )
    assert created.expires_at is not None and created.expires_at - created.created_at in (59, 60, 61)
    with database.sessions() as session:
        key = session.get(tenancy.ApiKey, created.id)
        assert key is not None
        key.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
        session.commit()
    with pytest.raises(AuthenticationError):
        _auth(database).authenticate_admin([BEARER(created.value)], None)


def test_removing_a_user_revokes_their_keys_in_that_organization_only(database: Database) -> None:
    first = _first(database)
    scope = Scope(first.organization_id)
    user = operations.create_user(database.sessions, "leaver@example.com")
    operations.add_member(database.sessions, str(user["id"]), first.organization_id, "reader")
    project = projects.create(database.sessions, scope, ProjectCreateRequest(name="work"))
    project_users.add(database.sessions, scope, project.id, ProjectUserCreateRequest(user_id=str(user["id"]), role="member"))
    project_key = operations.create_key(database.sessions, user=str(user["id"]), project=project.id)
    user_key = operations.create_key(database.sessions, user=str(user["id"]), kind="user")
    auth = _auth(database)
    assert auth.authenticate([BEARER(str(project_key["secret"]))], None, None).project_id == project.id

    with pytest.raises(InvalidRequest):  # the only owner cannot leave
        users.delete(database.sessions, scope, first.user_id)
    users.delete(database.sessions, scope, str(user["id"]))
    with pytest.raises(AuthenticationError):
        auth.authenticate([BEARER(str(project_key["secret"]))], None, None)
    with pytest.raises(AuthenticationError):  # a user key needs an organization the user is in
        auth.authenticate([BEARER(str(user_key["secret"]))], first.organization_id, None)
    with pytest.raises(NotFound):
        project_users.get(database.sessions, scope, project.id, str(user["id"]))
    with pytest.raises(NotFound):
        users.get(database.sessions, scope, str(user["id"]))


def test_project_keys_report_whether_their_owner_still_has_access(database: Database) -> None:
    first = _first(database)
    scope = Scope(first.organization_id)
    project = projects.create(database.sessions, scope, ProjectCreateRequest(name="keys"))
    reader = operations.create_user(database.sessions, "reader@example.com")
    # An owner may make a key for any project; made a reader (and no project member), its key is inactive.
    operations.add_member(database.sessions, str(reader["id"]), first.organization_id, "owner")
    reader_key = operations.create_key(database.sessions, user=str(reader["id"]), project=project.id)
    users.update(database.sessions, scope, str(reader["id"]), UserRoleUpdateRequest(role="reader"))
    owner_key = operations.create_key(database.sessions, project=project.id)
    robot = service_accounts.create(database.sessions, scope, project.id, ServiceAccountCreateRequest(name="robot"))
    assert robot.api_key is not None and robot.api_key.value.startswith("sk-svcacct-")

    def access(which: str) -> dict[str, str]:
        page = project_keys.list_keys(
            database.sessions, scope, project.id, ProjectApiKeyListQuery(owner_project_access=which)  # type: ignore[arg-type]
        )
        return {k.id: k.owner_project_access for k in page.data}

    assert access("any") == {reader_key["id"]: "inactive", owner_key["id"]: "active", robot.api_key.id: "active"}
    assert set(access("inactive")) == {reader_key["id"]}
    project_users.add(database.sessions, scope, project.id, ProjectUserCreateRequest(email="reader@example.com", role="member"))
    assert access("inactive") == {}
    robot_key = project_keys.get(database.sessions, scope, project.id, robot.api_key.id)
    assert robot_key.owner.type == "service_account" and robot_key.owner.service_account is not None

    auth = _auth(database)
    who = auth.authenticate([BEARER(robot.api_key.value)], None, None)
    assert (who.key_kind, who.user_id, who.project_id) == ("service_account", robot.id, project.id)
    with pytest.raises(InvalidRequest):  # a service account's key goes with the service account
        project_keys.delete(database.sessions, scope, project.id, robot.api_key.id)
    service_accounts.delete(database.sessions, scope, project.id, robot.id)
    with pytest.raises(AuthenticationError):
        auth.authenticate([BEARER(robot.api_key.value)], None, None)
    assert set(access("any")) == {reader_key["id"], owner_key["id"]}

    project_users.delete(database.sessions, scope, project.id, str(reader["id"]))  # revokes their key here
    assert set(access("any")) == {owner_key["id"]}


def test_invite_acceptance_creates_the_user_with_its_projects(database: Database) -> None:
    first = _first(database)
    scope = Scope(first.organization_id)
    project = projects.create(database.sessions, scope, ProjectCreateRequest(name="invited"))
    invite = invites.create(
        database.sessions, scope,
        InviteRequest.model_validate({"email": "new@example.com", "role": "reader", "projects": [{"id": project.id, "role": "owner"}]}),
    )
    assert invite.status == "pending" and invite.expires_at is not None
    with pytest.raises(InvalidRequest) as info:
        invites.create(database.sessions, scope, InviteRequest(email="new@example.com", role="owner"))
    assert info.value.param == "email"
    with pytest.raises(InvalidRequest):
        invites.accept(database.sessions, invite.id, "someone-else@example.com")

    accepted = invites.accept(database.sessions, invite.id, "New@Example.com", "Newcomer")
    assert accepted.status == "accepted" and accepted.accepted_at is not None
    members = users.list_users(database.sessions, scope, UserListQuery())
    assert {u.email for u in members.data} == {first.user_email, "new@example.com"}
    joined = project_users.list_users(database.sessions, scope, project.id, ListQuery())
    assert [(u.email, u.role) for u in joined.data] == [("new@example.com", "owner")]
    with pytest.raises(InvalidRequest):
        invites.delete(database.sessions, scope, invite.id)
    with pytest.raises(InvalidRequest):
        invites.accept(database.sessions, invite.id, "new@example.com")

    late = invites.create(database.sessions, scope, InviteRequest(email="late@example.com", role="reader"))
    with database.sessions() as session:
        row = session.get(Invite, late.id)
        assert row is not None
        row.expires_at = datetime.now(timezone.utc) - timedelta(minutes=1)
        session.commit()
    assert invites.get(database.sessions, scope, late.id).status == "expired"
    with pytest.raises(InvalidRequest):
        invites.accept(database.sessions, late.id, "late@example.com")
    assert invites.delete(database.sessions, scope, late.id).deleted


def test_audit_log_filters_and_pages_newest_first(database: Database) -> None:
    first = _first(database)
    scope = Scope(first.organization_id)
    made = [projects.create(database.sessions, scope, ProjectCreateRequest(name=f"a{i}")) for i in range(3)]
    projects.archive(database.sessions, scope, made[0].id)
    everything = audit.list_events(database.sessions, scope, AuditLogQuery())
    assert [e.type for e in everything.data][:4] == ["project.archived", "project.created", "project.created", "project.created"]
    newest = everything.data[0]
    assert newest.project is not None and newest.project.id == made[0].id and newest.actor is None
    assert newest.model_dump()["project.archived"] == {"id": made[0].id}

    created = audit.list_events(database.sessions, scope, AuditLogQuery(event_types=["project.created"], limit=2))
    assert [e.type for e in created.data] == ["project.created"] * 2 and created.has_more
    rest = audit.list_events(database.sessions, scope, AuditLogQuery(event_types=["project.created"], after=created.last_id))
    assert [e.project.id for e in created.data + rest.data if e.project] == [m.id for m in reversed(made)]
    back = audit.list_events(database.sessions, scope, AuditLogQuery(event_types=["project.created"], before=rest.first_id))
    assert [e.id for e in back.data] == [e.id for e in created.data]

    by_resource = audit.list_events(database.sessions, scope, AuditLogQuery(resource_ids=[made[1].id]))
    assert [e.type for e in by_resource.data] == ["project.created"]
    moment = newest.effective_at
    assert all(e.effective_at <= moment for e in audit.list_events(
        database.sessions, scope, AuditLogQuery.model_validate({"effective_at": {"lte": moment}})
    ).data)
    assert audit.list_events(
        database.sessions, scope, AuditLogQuery.model_validate({"effective_at": {"gt": moment}})
    ).data == []
    other = operations.create_organization(database.sessions, "Elsewhere")
    assert audit.list_events(database.sessions, Scope(str(other["id"])), AuditLogQuery()).data == []
