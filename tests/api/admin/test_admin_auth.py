"""Admin keys open the Administration API and nothing else; no other key opens it."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from serverproc import ServerProcess, raw_request

from .conftest import AdminKey


def _admin_routes() -> list[tuple[str, str]]:
    from modelhost.api import create_app

    paths = create_app().openapi()["paths"]
    routes = [(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1/organization") for m in ops]
    assert len(routes) >= 25
    return routes


def _url(server: ServerProcess, path: str) -> str:
    return server.root_url + path.replace("{", "").replace("}", "")


@pytest.mark.parametrize("kind", ["project", "user"])
def test_inference_keys_get_403_on_every_admin_route(server: ServerProcess, make_key, kind: str) -> None:  # type: ignore[no-untyped-def]
    key = make_key("--kind", kind, "--name", f"not-admin-{kind}")
    for method, path in _admin_routes():
        response = httpx.request(method, _url(server, path), json={}, headers={"Authorization": f"Bearer {key.secret}"})
        assert response.status_code == 403, (method, path, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "insufficient_permissions"
        assert "admin key" in error["message"]


def test_service_account_key_is_refused_too(admin: openai.OpenAI, server: ServerProcess) -> None:
    project = admin.admin.organization.projects.create(name="svcacct auth")
    created = admin.admin.organization.projects.service_accounts.create(project_id=project.id, name="bot")
    robot = openai.OpenAI(base_url=server.base_url, admin_api_key=created.api_key.value, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        robot.admin.organization.projects.list()
    # ...while it works where inference keys work.
    inference = openai.OpenAI(base_url=server.base_url, api_key=created.api_key.value, max_retries=0)
    assert inference.models.list().data


def test_admin_key_cannot_generate_or_list_models(server: ServerProcess, admin_key: AdminKey, model: str) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=admin_key.secret, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    assert info.value.code == "insufficient_permissions"
    with pytest.raises(openai.PermissionDeniedError):
        client.models.list()


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"Authorization", b"Bearer sk-admin-" + b"x" * 43)],
        [(b"Authorization", b"Bearer sk-admin-' OR '1'='1")],
        [(b"Authorization", b"Basic c2stYWRtaW4=")],
    ],
)
def test_missing_or_wrong_admin_key_is_401(server: ServerProcess, headers: list[tuple[bytes, bytes]]) -> None:
    status, body = raw_request(server, "GET", "/v1/organization/projects", headers)
    assert status == 401, body
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_admin_key_of_another_organization_header_is_mismatched(admin_key: AdminKey, other_admin_key: AdminKey, server: ServerProcess) -> None:
    response = httpx.get(
        f"{server.base_url}/organization/projects",
        headers={"Authorization": f"Bearer {admin_key.secret}", "OpenAI-Organization": other_admin_key.organization},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "mismatched_organization"
