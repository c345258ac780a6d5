"""`/v1/organization/users` and `/v1/organization/invites` (accepted with `modelhost invites accept`)."""

from __future__ import annotations

import openai
import pytest

from serverproc import ServerProcess
from support.openapi_spec import validate

from .conftest import AdminKey


def test_users_list_retrieve_modify_delete(admin: openai.OpenAI, admin_http, admin_key: AdminKey, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    member = server.cli("users", "create", "colleague@example.com", "--org", admin_key.organization)
    listed = admin_http("GET", "/organization/users", params={"limit": 100})
    validate("UserListResponse", listed.json())
    roles = {u["email"]: u["role"] for u in listed.json()["data"]}
    assert roles["colleague@example.com"] == "reader" and "owner" in roles.values()
    only = admin.admin.organization.users.list(emails=["colleague@example.com"])
    assert [u.id for u in only.data] == [member["id"]]

    validate("User", admin_http("GET", f"/organization/users/{member['id']}").json())
    promoted = admin_http("POST", f"/organization/users/{member['id']}", json={"role": "owner"})
    validate("User", promoted.json())
    assert promoted.json()["role"] == "owner"
    bad = admin_http("POST", f"/organization/users/{member['id']}", json={"role": "emperor"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "role"

    deleted = admin_http("DELETE", f"/organization/users/{member['id']}")
    validate("UserDeleteResponse", deleted.json())
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.users.retrieve(str(member["id"]))


def test_the_last_owner_stays(other_admin: openai.OpenAI, other_admin_key: AdminKey) -> None:
    with pytest.raises(openai.BadRequestError):
        other_admin.admin.organization.users.update(other_admin_key.owner, role="reader")
    with pytest.raises(openai.BadRequestError):
        other_admin.admin.organization.users.delete(other_admin_key.owner)


def test_users_of_another_organization_are_404(admin: openai.OpenAI, other_admin_key: AdminKey, server: ServerProcess) -> None:
    theirs = server.cli("users", "create", "theirs@example.com", "--org", other_admin_key.organization)
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.users.retrieve(str(theirs["id"]))
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.users.delete(str(theirs["id"]))


def test_invite_then_accept_with_the_cli(admin: openai.OpenAI, admin_http, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    project = admin.admin.organization.projects.create(name="For the invitee")
    sent = admin_http(
        "POST", "/organization/invites",
        json={"email": "invitee@example.com", "role": "reader", "projects": [{"id": project.id, "role": "member"}]},
    )
    assert sent.status_code == 200, sent.text
    validate("Invite", sent.json())
    invite = sent.json()
    assert invite["status"] == "pending" and invite["projects"] == [{"id": project.id, "role": "member"}]
    validate("InviteListResponse", admin_http("GET", "/organization/invites").json())
    assert admin.admin.organization.invites.retrieve(invite["id"]).email == "invitee@example.com"

    accepted = server.cli("invites", "accept", invite["id"], "--user", "invitee@example.com")
    assert accepted["status"] == "accepted"
    joined = admin.admin.organization.users.list(emails=["invitee@example.com"]).data
    assert [u.role for u in joined] == ["reader"]
    assert [u.email for u in admin.admin.organization.projects.users.list(project_id=project.id)] == ["invitee@example.com"]
    assert admin.admin.organization.invites.retrieve(invite["id"]).status == "accepted"
    with pytest.raises(openai.BadRequestError):
        admin.admin.organization.invites.delete(invite["id"])

    withdrawn = admin.admin.organization.invites.create(email="maybe@example.com", role="owner")
    removed = admin_http("DELETE", f"/organization/invites/{withdrawn.id}")
    validate("InviteDeleteResponse", removed.json())
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.invites.retrieve(withdrawn.id)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"email": "not-an-email", "role": "reader"}, 400, "email"),
        ({"email": "a@example.com", "role": "admin"}, 400, "role"),
        ({"role": "reader"}, 400, "email"),
        ({"email": "a@example.com", "role": "reader", "projects": [{"id": "proj_nope", "role": "member"}]}, 404, "projects[0].id"),
    ],
)
def test_bad_invites_name_the_parameter(admin_http, body: dict, status: int, param: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    response = admin_http("POST", "/organization/invites", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_invites_of_another_organization_are_404(admin: openai.OpenAI, other_admin: openai.OpenAI) -> None:
    theirs = other_admin.admin.organization.invites.create(email="elsewhere@example.com", role="reader")
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.invites.retrieve(theirs.id)
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.invites.delete(theirs.id)
