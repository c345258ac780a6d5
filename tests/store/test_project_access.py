"""Who may use a project, and which models: project keys that end with their owner's access, and
projects' model permissions inside the operator's lists. On SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from modelhost.auth import Authenticator, Principal
from modelhost.engine.registry import ModelAccess, ModelRegistry, ServedModel
from modelhost.errors import AuthenticationError, InvalidRequest, NotFound
from modelhost.organization import Scope, audit, bootstrap, model_permissions, operations, project_users, projects, users
from modelhost.protocol.admin import (
    AuditLogQuery,
    ProjectCreateRequest,
    ProjectModelPermissionsUpdateRequest,
    ProjectUserCreateRequest,
    UserRoleUpdateRequest,
)
from modelhost.store import members, tenancy
from modelhost.store.schema import Project
from store.databases import Database

BEARER = "Bearer {}".format


def _auth(db: Database) -> Authenticator:
    return Authenticator(db.sessions, cache_seconds=0)


def _works(auth: Authenticator, secret: object) -> bool:
    try:
        auth.authenticate([BEARER(str(secret))], None, None)
    except AuthenticationError:
        return False
    return True


# -- item 8: project keys end with their owner's access -------------------------------------------
def test_keys_and_users_get_one_project_access_rule(database: Database) -> None:
    first = bootstrap.bootstrap(database.sessions)
    scope = Scope(first.organization_id)
    project = projects.create(database.sessions, scope, ProjectCreateRequest(name="rule"))
    other_org = operations.create_organization(database.sessions, "Elsewhere")
    people = {}
    for email, role in [("owner2@x.io", "owner"), ("member@x.io", "reader"), ("outsider@x.io", "reader")]:
        people[email] = str(operations.create_user(database.sessions, email)["id"])
        operations.add_member(database.sessions, people[email], first.organization_id, role)
    project_users.add(database.sessions, scope, project.id, ProjectUserCreateRequest(user_id=people["member@x.io"], role="member"))
    people["stranger@x.io"] = str(operations.create_user(database.sessions, "stranger@x.io")["id"])
    operations.add_member(database.sessions, people["stranger@x.io"], str(other_org["id"]), "owner")

    checked = 0
    with database.sessions() as session:
        for target in (project.id, first.project_id):  # a project, and the default project (open to members)
            stored = session.get(Project, target)
            assert stored is not None
            for user_id in people.values():
                # Written straight to the store: the CLI would refuse some of these keys (see below).
                key = tenancy.add_key(
                    session, kind="project", secret_hash=f"{target}{user_id}".ljust(64, "0")[:64],
                    redacted_value="sk-proj-****", name="rule", user_id=user_id,
                    organization_id=first.organization_id, project_id=target,
                )
                found = tenancy.project_key(session, target, key.id)
                assert found is not None
                assert found[1] == members.may_use_project(session, stored, user_id), (target, user_id)
                checked += found[1]
    assert checked == 5  # owner2 twice, member twice, outsider on the default project only


def test_a_project_key_works_only_while_its_owner_may_use_the_project(database: Database) -> None:
    first = bootstrap.bootstrap(database.sessions)
    scope = Scope(first.organization_id)
    project = projects.create(database.sessions, scope, ProjectCreateRequest(name="access"))
    owner2 = str(operations.create_user(database.sessions, "owner2@x.io")["id"])
    operations.add_member(database.sessions, owner2, first.organization_id, "owner")
    owner_key = operations.create_key(database.sessions, user=owner2, project=project.id)
    auth = _auth(database)
    assert _works(auth, owner_key["secret"])

    # Demoted, and no member of the project: the key is inactive and refused (it was accepted before).
    users.update(database.sessions, scope, owner2, UserRoleUpdateRequest(role="reader"))
    assert not _works(auth, owner_key["secret"])
    # Not revoked: access given back (as OpenAI's owner_project_access reports it) makes it active again.
    users.update(database.sessions, scope, owner2, UserRoleUpdateRequest(role="owner"))
    assert _works(auth, owner_key["secret"])

    # Taken out of the project or the organization: the keys are revoked, and stay so when re-added.
    reader = str(operations.create_user(database.sessions, "reader@x.io")["id"])
    operations.add_member(database.sessions, reader, first.organization_id, "reader")
    project_users.add(database.sessions, scope, project.id, ProjectUserCreateRequest(user_id=reader, role="member"))
    member_key = operations.create_key(database.sessions, user=reader, project=project.id)
    assert _works(auth, member_key["secret"])
    project_users.delete(database.sessions, scope, project.id, reader)
    assert not _works(auth, member_key["secret"])
    project_users.add(database.sessions, scope, project.id, ProjectUserCreateRequest(user_id=reader, role="member"))
    assert not _works(auth, member_key["secret"])

    second_key = operations.create_key(database.sessions, user=reader, project=project.id)
    default_key = operations.create_key(database.sessions, user=reader)  # the default project
    users.delete(database.sessions, scope, reader)
    operations.add_member(database.sessions, reader, first.organization_id, "reader")
    assert not _works(auth, second_key["secret"]) and not _works(auth, default_key["secret"])


def test_the_cli_makes_project_keys_only_for_users_who_may_use_the_project(database: Database) -> None:
    first = bootstrap.bootstrap(database.sessions)
    scope = Scope(first.organization_id)
    project = projects.create(database.sessions, scope, ProjectCreateRequest(name="members only"))
    reader = str(operations.create_user(database.sessions, "reader@x.io")["id"])
    operations.add_member(database.sessions, reader, first.organization_id, "reader")
    with pytest.raises(InvalidRequest, match="not a member of project"):
        operations.create_key(database.sessions, user=reader, project=project.id)
    assert operations.create_key(database.sessions, user=reader)["project"] == first.project_id  # default: every member
    project_users.add(database.sessions, scope, project.id, ProjectUserCreateRequest(user_id=reader, role="member"))
    assert operations.create_key(database.sessions, user=reader, project=project.id)["project"] == project.id


# -- item 9: model permissions inside the operator's lists ----------------------------------------
def _registry(access: ModelAccess) -> ModelRegistry:
    models = [
        ServedModel(id=name, created=0, owned_by="test", engine=None, fingerprint="fp", aliases=aliases)
        for name, aliases in [("big", ("big-latest",)), ("small", ()), ("emb", ())]
    ]
    return ModelRegistry(models, access)


def test_model_permissions_narrow_the_operator_lists_and_never_widen_them(database: Database) -> None:
    first = bootstrap.bootstrap(database.sessions)
    scope = Scope(first.organization_id)
    limited = str(operations.create_organization(database.sessions, "Limited")["id"])
    registry = _registry(ModelAccess(organizations={limited: frozenset({"small", "emb"})}))
    project = projects.create(database.sessions, scope, ProjectCreateRequest(name="narrow"))
    fresh = projects.create(database.sessions, Scope(limited), ProjectCreateRequest(name="new in a limited org"))

    # Without a list of its own a project inherits: everything, or its organization's list.
    got = model_permissions.get(database.sessions, scope, project.id, registry)
    assert (got.mode, got.model_ids) == ("deny_list", [])
    got = model_permissions.get(database.sessions, Scope(limited), fresh.id, registry)
    assert (got.mode, got.model_ids) == ("allow_list", ["small", "emb"])

    body = ProjectModelPermissionsUpdateRequest(mode="allow_list", model_ids=["big-latest", "emb", "big"])
    saved = model_permissions.update(database.sessions, scope, project.id, body, registry)
    assert saved.model_ids == ["big", "emb"]  # canonical ids, once each
    assert model_permissions.get(database.sessions, scope, project.id, registry) == saved

    # A model the operator hides from the project is refused exactly like one that does not exist.
    answers = []
    for name in ("big", "no-such-model"):
        with pytest.raises(InvalidRequest) as info:
            model_permissions.update(
                database.sessions, Scope(limited), fresh.id,
                ProjectModelPermissionsUpdateRequest(mode="allow_list", model_ids=["small", name]), registry,
            )
        answers.append((info.value.param, info.value.code, info.value.message.replace(name, "<name>")))
    assert answers[0] == answers[1] and answers[0][0] == "model_ids[1]"

    # The principal carries the list; the registry applies it under the operator's ceiling.
    key = operations.create_key(database.sessions, project=project.id)
    who = _auth(database).authenticate([BEARER(str(key["secret"]))], None, None)
    assert [m.id for m in registry.visible(who)] == ["big", "emb"]
    deny = ProjectModelPermissionsUpdateRequest(mode="deny_list", model_ids=["big"])
    model_permissions.update(database.sessions, scope, project.id, deny, registry)
    who = _auth(database).authenticate([BEARER(str(key["secret"]))], None, None)
    assert [m.id for m in registry.visible(who)] == ["small", "emb"]
    outsider = Principal(limited, fresh.id, "user-x", "key_x", "project")
    assert [m.id for m in registry.visible(outsider)] == ["small", "emb"]

    assert model_permissions.delete(database.sessions, scope, project.id).deleted is True
    assert model_permissions.delete(database.sessions, scope, project.id).deleted is False
    who = _auth(database).authenticate([BEARER(str(key["secret"]))], None, None)
    assert who.model_policy is None and [m.id for m in registry.visible(who)] == ["big", "small", "emb"]

    events = audit.list_events(database.sessions, scope, AuditLogQuery(event_types=["project.updated"]))
    changes = [e.model_dump()["project.updated"]["changes_requested"]["model_permissions"] for e in events.data]
    assert changes == [None, {"mode": "deny_list", "model_ids": ["big"]}, {"mode": "allow_list", "model_ids": ["big", "emb"]}]


def test_model_permissions_of_another_organization_are_not_found(database: Database) -> None:
    first = bootstrap.bootstrap(database.sessions)
    other = str(operations.create_organization(database.sessions, "Other")["id"])
    theirs = projects.create(database.sessions, Scope(other), ProjectCreateRequest(name="theirs"))
    registry = _registry(ModelAccess())
    scope = Scope(first.organization_id)
    body = ProjectModelPermissionsUpdateRequest(mode="deny_list", model_ids=["big"])
    for project_id in (theirs.id, "proj_does_not_exist"):
        for call in (
            lambda: model_permissions.get(database.sessions, scope, project_id, registry),
            lambda: model_permissions.update(database.sessions, scope, project_id, body, registry),
            lambda: model_permissions.delete(database.sessions, scope, project_id),
        ):
            with pytest.raises(NotFound, match=f"No project found with id '{project_id}'"):
                call()
    assert model_permissions.get(database.sessions, Scope(other), theirs.id, registry).model_ids == []
