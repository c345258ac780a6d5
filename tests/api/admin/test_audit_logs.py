"""`/v1/organization/audit_logs`: who changed what, filterable as the spec says."""

from __future__ import annotations

import time

import openai
import pytest

from serverproc import ServerProcess
from support.openapi_spec import validate

from .conftest import AdminKey


def test_changes_are_logged_with_their_actor(admin: openai.OpenAI, admin_http, admin_key: AdminKey, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    since = int(time.time()) - 1
    project = admin.admin.organization.projects.create(name="Audited")
    admin.admin.organization.projects.update(project.id, name="Audited 2")
    admin.admin.organization.projects.archive(project.id)
    cli_key = server.cli("keys", "create", "--name", "audited-by-cli")

    response = admin_http("GET", "/organization/audit_logs", params={"project_ids[]": project.id})
    assert response.status_code == 200, response.text
    body = response.json()
    validate("ListAuditLogsResponse", body)
    assert [e["type"] for e in body["data"]] == ["project.archived", "project.updated", "project.created"]
    created = body["data"][-1]
    assert created["project.created"] == {"id": project.id, "data": {"name": "Audited", "title": "Audited"}}
    assert body["data"][1]["project.updated"]["changes_requested"] == {"title": "Audited 2"}
    assert created["project"] == {"id": project.id, "name": "Audited"}
    actor = created["actor"]
    assert actor["type"] == "api_key" and actor["api_key"]["id"] == admin_key.id
    assert actor["api_key"]["user"]["id"] == admin_key.owner

    by_cli = admin.admin.organization.audit_logs.list(resource_ids=[str(cli_key["id"])], effective_at={"gte": since})
    assert [(e.type, e.actor) for e in by_cli.data] == [("api_key.created", None)]
    mine = admin.admin.organization.audit_logs.list(actor_ids=[admin_key.id], event_types=["project.archived"], limit=100)
    assert project.id in [e.project.id for e in mine.data if e.project]


def test_audit_log_pages_and_time_bounds(admin: openai.OpenAI, admin_http) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        admin.admin.organization.projects.create(name=f"Paged {i}")
    first = admin_http("GET", "/organization/audit_logs", params={"limit": 2, "event_types[]": "project.created"}).json()
    assert len(first["data"]) == 2 and first["has_more"]
    second = admin_http(
        "GET", "/organization/audit_logs", params={"limit": 2, "event_types[]": "project.created", "after": first["last_id"]}
    ).json()
    assert not {e["id"] for e in first["data"]} & {e["id"] for e in second["data"]}
    assert first["data"][-1]["effective_at"] >= second["data"][0]["effective_at"]
    newest = first["data"][0]["effective_at"]
    later = admin_http("GET", "/organization/audit_logs", params={"effective_at[gt]": newest}).json()
    assert later["data"] == []
    walked = [e.id for e in admin.admin.organization.audit_logs.list(limit=5)]  # the SDK follows the pages
    assert len(walked) == len(set(walked)) >= 5


def test_another_organization_sees_none_of_it(admin: openai.OpenAI, other_admin: openai.OpenAI) -> None:
    project = admin.admin.organization.projects.create(name="Private")
    assert other_admin.admin.organization.audit_logs.list(project_ids=[project.id]).data == []
    assert project.id not in {e.project.id for e in other_admin.admin.organization.audit_logs.list(limit=100).data if e.project}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"event_types[]": "DROP TABLE"}, "event_types"),
        ({"effective_at[gte]": "soon"}, "effective_at.gte"),
        ({"after": "audit_log-nope"}, "after"),
        ({"after": "a", "before": "b"}, "before"),
    ],
)
def test_bad_audit_parameters_are_400(admin_http, params: dict, param: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    response = admin_http("GET", "/organization/audit_logs", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
