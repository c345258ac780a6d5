"""`/v1/organization/projects` and what hangs off a project: users, service accounts, API keys."""

from __future__ import annotations

import time

import openai
import pytest

from serverproc import ServerProcess
from support.openapi_spec import validate

from .conftest import AdminKey


def test_project_lifecycle(admin: openai.OpenAI, admin_http) -> None:  # type: ignore[no-untyped-def]
    projects = admin.admin.organization.projects
    created = admin_http("POST", "/organization/projects", json={"name": "Lifecycle"})
    validate("Project", created.json())
    project_id = created.json()["id"]
    assert created.json()["status"] == "active" and created.json()["archived_at"] is None

    renamed = projects.update(project_id, name="Lifecycle 2")
    assert renamed.name == "Lifecycle 2"
    validate("Project", admin_http("GET", f"/organization/projects/{project_id}").json())

    archived = admin_http("POST", f"/organization/projects/{project_id}/archive").json()
    validate("Project", archived)
    assert archived["status"] == "archived" and archived["archived_at"]

    listed = admin_http("GET", "/organization/projects", params={"limit": 100})
    validate("ProjectListResponse", listed.json())
    assert project_id not in [p["id"] for p in listed.json()["data"]]
    with_archived = [p.id for p in projects.list(include_archived=True, limit=100)]
    assert project_id in with_archived

    with pytest.raises(openai.BadRequestError):  # archived projects do not change
        projects.update(project_id, name="again")


def test_the_default_project_cannot_be_archived(admin: openai.OpenAI, admin_key: AdminKey, server: ServerProcess) -> None:
    default = server.cli("projects", "list", "--org", admin_key.organization)["data"][0]  # type: ignore[index]  # made with the organization
    with pytest.raises(openai.BadRequestError):
        admin.admin.organization.projects.archive(default["id"])


def test_projects_of_another_organization_are_404(admin: openai.OpenAI, other_admin: openai.OpenAI) -> None:
    theirs = other_admin.admin.organization.projects.create(name="Theirs")
    org = admin.admin.organization
    calls = [
        lambda: org.projects.retrieve(theirs.id),
        lambda: org.projects.update(theirs.id, name="stolen"),
        lambda: org.projects.archive(theirs.id),
        lambda: org.projects.users.list(project_id=theirs.id),
        lambda: org.projects.service_accounts.create(project_id=theirs.id, name="spy"),
        lambda: org.projects.api_keys.list(project_id=theirs.id),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.status_code == 404
    assert other_admin.admin.organization.projects.retrieve(theirs.id).status == "active"
    with pytest.raises(openai.NotFoundError) as missing:
        org.projects.retrieve("proj_doesnotexist")
    # The same answer as for an id that does not exist: nothing tells that it exists elsewhere.
    missing_body = dict(missing.value.body)  # type: ignore[arg-type]
    missing_body["message"] = missing_body["message"].replace("proj_doesnotexist", theirs.id)
    assert missing_body == info.value.body


@pytest.mark.parametrize(
    ("params", "param"),
    [({"limit": 0}, "limit"), ({"limit": 1000}, "limit"), ({"after": "proj_nope"}, "after"), ({"include_archived": "maybe"}, "include_archived")],
)
def test_bad_list_parameters_are_400(admin_http, params: dict, param: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    response = admin_http("GET", "/organization/projects", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_project_users(admin: openai.OpenAI, admin_http, server: ServerProcess, admin_key: AdminKey) -> None:  # type: ignore[no-untyped-def]
    project = admin.admin.organization.projects.create(name="Team")
    member = server.cli("users", "create", "teammate@example.com", "--org", admin_key.organization)
    stranger = server.cli("users", "create", "not-in-org@example.com")
    users = admin.admin.organization.projects.users

    added = admin_http("POST", f"/organization/projects/{project.id}/users", json={"user_id": member["id"], "role": "member"})
    assert added.status_code == 200, added.text
    validate("ProjectUser", added.json())
    listed = admin_http("GET", f"/organization/projects/{project.id}/users")
    validate("ProjectUserListResponse", listed.json())
    assert [u["email"] for u in listed.json()["data"]] == ["teammate@example.com"]

    assert users.update(str(member["id"]), project_id=project.id, role="owner").role == "owner"
    assert users.retrieve(str(member["id"]), project_id=project.id).role == "owner"
    with pytest.raises(openai.NotFoundError):  # not a member of this organization: as if unknown
        users.create(project_id=project.id, user_id=str(stranger["id"]), role="member")
    with pytest.raises(openai.BadRequestError) as info:
        users.create(project_id=project.id, user_id=str(member["id"]), role="emperor")
    assert info.value.body["param"] == "role"  # type: ignore[index]

    deleted = admin_http("DELETE", f"/organization/projects/{project.id}/users/{member['id']}")
    validate("ProjectUserDeleteResponse", deleted.json())
    with pytest.raises(openai.NotFoundError):
        users.retrieve(str(member["id"]), project_id=project.id)


def test_service_accounts_and_project_keys(admin: openai.OpenAI, admin_http, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    project = admin.admin.organization.projects.create(name="Robots")
    created = admin_http("POST", f"/organization/projects/{project.id}/service_accounts", json={"name": "robot"})
    validate("ProjectServiceAccountCreateResponse", created.json())
    account = created.json()
    secret = account["api_key"]["value"]
    assert secret.startswith("sk-svcacct-") and account["role"] == "member"
    robot = openai.OpenAI(base_url=server.base_url, api_key=secret, max_retries=0)
    assert robot.models.list().data

    quiet = admin.admin.organization.projects.service_accounts.create(
        project_id=project.id, name="keyless", create_service_account_only=True
    )
    assert quiet.api_key is None and quiet.role == "none"

    listed = admin_http("GET", f"/organization/projects/{project.id}/service_accounts")
    validate("ProjectServiceAccountListResponse", listed.json())
    assert {a["name"] for a in listed.json()["data"]} == {"robot", "keyless"}
    validate("ProjectServiceAccount", admin_http("GET", f"/organization/projects/{project.id}/service_accounts/{account['id']}").json())

    user_key = server.cli("keys", "create", "--project", project.id, "--name", "human")
    keys = admin_http("GET", f"/organization/projects/{project.id}/api_keys")
    validate("ProjectApiKeyListResponse", keys.json())
    owners = {k["id"]: k["owner"]["type"] for k in keys.json()["data"]}
    assert owners == {user_key["id"]: "user", account["api_key"]["id"]: "service_account"}
    assert secret not in keys.text and str(user_key["secret"]) not in keys.text
    validate("ProjectApiKey", admin_http("GET", f"/organization/projects/{project.id}/api_keys/{user_key['id']}").json())

    refused = admin_http("DELETE", f"/organization/projects/{project.id}/api_keys/{account['api_key']['id']}")
    assert refused.status_code == 400  # a service account's key goes with its service account
    gone = admin_http("DELETE", f"/organization/projects/{project.id}/api_keys/{user_key['id']}")
    validate("ProjectApiKeyDeleteResponse", gone.json())
    removed = admin_http("DELETE", f"/organization/projects/{project.id}/service_accounts/{account['id']}")
    validate("ProjectServiceAccountDeleteResponse", removed.json())
    assert admin_http("GET", f"/organization/projects/{project.id}/api_keys").json()["data"] == []
    time.sleep(0.6)  # the test server trusts a verified key for 0.5 s
    with pytest.raises(openai.AuthenticationError):
        robot.models.list()
