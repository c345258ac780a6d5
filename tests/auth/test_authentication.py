"""Every authentication failure answers exactly as OpenAI does, through the SDK and raw HTTP."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from serverproc import ServerProcess, raw_request

HI = [{"role": "user", "content": "Hi"}]


def _sdk(server: ServerProcess, key: str, **kw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, **kw)


def test_no_key_is_401_with_a_helpful_message(server: ServerProcess) -> None:
    response = httpx.get(f"{server.base_url}/models")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] is None
    assert "API key" in error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Authorization", b"")],
        [(b"Authorization", b"Bearer")],
        [(b"Authorization", b"Bearer   ")],
        [(b"Authorization", b"Basic dXNlcjpwYXNz")],
        [(b"Authorization", b"Token sk-abc")],
        [(b"Authorization", b"sk-no-scheme")],
        [(b"Authorization", b"Bearer sk-\x00abc")],
        [(b"Authorization", b"Bearer sk-\xc3\xa9\xc3\xa9")],
        [(b"Authorization", b"Bearer sk-a"), (b"Authorization", b"Bearer sk-b")],
    ],
)
def test_malformed_authorization_is_401(server: ServerProcess, headers: list[tuple[bytes, bytes]]) -> None:
    status, body = raw_request(server, "GET", "/v1/models", headers)
    if status == 400 and b"Invalid HTTP" in body:
        return  # rejected by the HTTP parser itself (NUL bytes): never reaches a handler
    assert status == 401, body
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_wrong_key_is_401_invalid_api_key(server: ServerProcess, model: str) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        _sdk(server, "sk-proj-" + "x" * 43).chat.completions.create(model=model, messages=HI)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert "x" * 10 not in info.value.message  # the presented key is never echoed


@pytest.mark.parametrize(
    "token", ["' OR '1'='1", "sk-' OR 1=1 --", "sk-'; SELECT pg_sleep(5); --", "sk-" + "a" * 60000]
)
def test_hostile_tokens_are_401(server: ServerProcess, token: str) -> None:
    started = time.monotonic()
    status, body = raw_request(server, "GET", "/v1/models", [(b"Authorization", b"Bearer " + token.encode())])
    assert time.monotonic() - started < 2
    assert status == 401, body
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


def test_revoked_key_is_refused_within_the_cache_ttl(server: ServerProcess, make_key, model: str) -> None:  # type: ignore[no-untyped-def]
    key = make_key("--name", "to-revoke")
    client = _sdk(server, key.secret)
    assert client.models.list().data
    server.cli("keys", "revoke", key.id)
    time.sleep(0.6)  # the test server trusts a verified key for 0.5 s
    with pytest.raises(openai.AuthenticationError) as info:
        client.models.list()
    assert info.value.code == "invalid_api_key"


def test_project_key_with_another_organization_is_mismatched(server: ServerProcess, project_key) -> None:  # type: ignore[no-untyped-def]
    other = server.cli("orgs", "create", "Elsewhere")
    with pytest.raises(openai.AuthenticationError) as info:
        _sdk(server, project_key.secret, organization=str(other["id"])).models.list()
    assert info.value.code == "mismatched_organization"


def test_user_key_with_a_foreign_organization_is_mismatched(server: ServerProcess, user_key) -> None:  # type: ignore[no-untyped-def]
    stranger = server.cli("users", "create", "stranger@example.com")
    foreign = server.cli("orgs", "create", "Foreign", "--owner", str(stranger["id"]))
    with pytest.raises(openai.AuthenticationError) as info:
        _sdk(server, user_key.secret, organization=str(foreign["id"])).models.list()
    assert info.value.code == "mismatched_organization"


def test_project_header_must_match_a_project_key(server: ServerProcess, project_key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.AuthenticationError) as info:
        _sdk(server, project_key.secret, project="proj_doesnotexist").models.list()
    assert info.value.code == "mismatched_project"


def test_user_key_reaches_only_the_projects_its_user_may_use(server: ServerProcess, make_key, user_key) -> None:  # type: ignore[no-untyped-def]
    organization = user_key.organization
    project = str(server.cli("projects", "create", "Members only", "--org", organization)["id"])
    reader = server.cli("users", "create", "reader@example.com", "--org", organization, "--role", "reader")
    reader_key = make_key("--kind", "user", "--user", str(reader["id"]), "--org", organization).secret

    assert _sdk(server, reader_key).models.list().data  # the default project: every member
    with pytest.raises(openai.AuthenticationError) as info:
        _sdk(server, reader_key, project=project).models.list()
    assert info.value.code == "mismatched_project"
    assert _sdk(server, user_key.secret, project=project).models.list().data  # an owner reaches every project

    admin = make_key("--kind", "admin").secret
    added = httpx.post(
        f"{server.base_url}/organization/projects/{project}/users",
        json={"user_id": reader["id"], "role": "member"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert added.status_code == 200, added.text
    assert _sdk(server, reader_key, project=project).models.list().data


def test_key_of_archived_project_is_refused(server: ServerProcess, project_key) -> None:  # type: ignore[no-untyped-def]
    project = server.cli("projects", "create", "Short-lived", "--org", project_key.organization)
    key = server.cli("keys", "create", "--project", str(project["id"]))
    client = _sdk(server, str(key["secret"]))
    assert client.models.list().data
    server.cli("projects", "archive", str(project["id"]))
    time.sleep(0.6)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"


def test_unknown_route_is_404_in_the_envelope(server: ServerProcess, project_key) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{server.base_url}/nothing-here", headers={"Authorization": f"Bearer {project_key.secret}"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/nothing-here)"


def test_every_route_requires_a_key(server: ServerProcess, model: str) -> None:
    from modelhost.api import create_app

    # The app's own route table (its OpenAPI document): every /v1 operation, not a chosen few.
    paths = create_app().openapi()["paths"]
    checked = 0
    for path, operations in paths.items():
        assert path.startswith("/v1/"), f"unexpected public route {path}"
        for method in operations:
            url = server.root_url + path.replace("{model}", model).replace("{engine_id}", model)
            response = httpx.request(method.upper(), url, json={})
            assert response.status_code == 401, (method, path, response.text)
            checked += 1
    assert checked >= 5
