"""R2-8 (issue #12): a user's project keys stop working when the user loses the project.

As at OpenAI, a project key acts for its owner, so it works only while the owner may use the
project (an owner of the organization, a member of the project, or anyone in the organization for
its default project). Losing that access by a role change makes the key `inactive` (refused, and
listed so; access given back makes it active again, as OpenAI's `owner_project_access` reports it);
being taken out of the project or the organization revokes the key for good, so re-adding the user
does not bring it back. The CLI makes project keys only for users who may use the project.
Authentication trusts a verified key for MODELHOST_KEY_CACHE_SECONDS (0.5 s here).
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai

from .conftest import Guarded, make_key, wait_until

TTL_MARGIN = 5.0  # seconds to wait for a change: the key cache time (0.5 s) and a slow CI machine


def _sdk(guarded: Guarded, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=guarded.proc.base_url, api_key=secret, max_retries=0)


def _refused(guarded: Guarded, secret: str) -> bool:
    try:
        _sdk(guarded, secret).models.list()
    except openai.AuthenticationError as exc:
        assert exc.code == "invalid_api_key", exc.body
        return True
    return False


def _admin(guarded: Guarded, secret: str):  # type: ignore[no-untyped-def]
    def send(method: str, path: str, **kwargs: object) -> httpx.Response:
        response = httpx.request(
            method, guarded.proc.base_url + path, headers={"Authorization": f"Bearer {secret}"}, timeout=30, **kwargs  # type: ignore[arg-type]
        )
        assert response.status_code == 200, (method, path, response.text)
        return response

    return send


def _organization(guarded: Guarded, name: str):  # type: ignore[no-untyped-def]
    """A fresh organization with an admin key and a project of its own: (org id, admin, project id)."""
    org = str(guarded.proc.cli("orgs", "create", name)["id"])
    admin = _admin(guarded, make_key(guarded.proc, "--kind", "admin", "--org", org)["secret"])
    project = admin("POST", "/organization/projects", json={"name": f"{name} project"}).json()["id"]
    return org, admin, project


def test_R2_8_a_demoted_owner_s_project_key_is_refused_until_access_returns(guarded: Guarded) -> None:
    org, admin, project = _organization(guarded, "R2-8 demotion")
    owner = guarded.proc.cli("users", "create", "r2-8-owner@example.com", "--org", org, "--role", "owner")
    key = make_key(guarded.proc, "--user", str(owner["id"]), "--org", org, "--project", project)
    assert _sdk(guarded, key["secret"]).models.list().data  # an owner may use every project

    admin("POST", f"/organization/users/{owner['id']}", json={"role": "reader"})  # and is no member of it
    wait_until(lambda: _refused(guarded, key["secret"]), TTL_MARGIN)
    listed = admin("GET", f"/organization/projects/{project}/api_keys", params={"owner_project_access": "inactive"})
    assert [k["id"] for k in listed.json()["data"]] == [key["id"]]

    admin("POST", f"/organization/users/{owner['id']}", json={"role": "owner"})
    wait_until(lambda: not _refused(guarded, key["secret"]), TTL_MARGIN)


def test_R2_8_keys_of_a_user_taken_out_of_the_project_or_organization_stay_revoked(guarded: Guarded) -> None:
    org, admin, project = _organization(guarded, "R2-8 removal")
    member = guarded.proc.cli("users", "create", "r2-8-member@example.com", "--org", org, "--role", "reader")
    admin("POST", f"/organization/projects/{project}/users", json={"user_id": member["id"], "role": "member"})
    in_project = make_key(guarded.proc, "--user", str(member["id"]), "--org", org, "--project", project)
    assert _sdk(guarded, in_project["secret"]).models.list().data

    admin("DELETE", f"/organization/projects/{project}/users/{member['id']}")
    wait_until(lambda: _refused(guarded, in_project["secret"]), TTL_MARGIN)
    admin("POST", f"/organization/projects/{project}/users", json={"user_id": member["id"], "role": "member"})
    again = make_key(guarded.proc, "--user", str(member["id"]), "--org", org, "--project", project)
    default = make_key(guarded.proc, "--user", str(member["id"]), "--org", org)  # its default project
    assert _sdk(guarded, again["secret"]).models.list().data and _sdk(guarded, default["secret"]).models.list().data
    assert _refused(guarded, in_project["secret"])  # re-adding the user does not revive the revoked key

    admin("DELETE", f"/organization/users/{member['id']}")
    wait_until(lambda: _refused(guarded, again["secret"]) and _refused(guarded, default["secret"]), TTL_MARGIN)
    guarded.proc.cli("users", "add", str(member["id"]), "--org", org, "--role", "reader")
    admin("POST", f"/organization/projects/{project}/users", json={"user_id": member["id"], "role": "member"})
    assert _refused(guarded, again["secret"]) and _refused(guarded, default["secret"])


def _modelhost(guarded: Guarded, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelhost", *args], env=guarded.proc.env(), capture_output=True, text=True, timeout=60
    )


def test_R2_8_the_cli_refuses_a_project_key_for_a_user_outside_the_project(guarded: Guarded) -> None:
    org, admin, project = _organization(guarded, "R2-8 cli")
    reader = guarded.proc.cli("users", "create", "r2-8-reader@example.com", "--org", org, "--role", "reader")
    before = len(guarded.proc.cli("keys", "list")["data"])  # type: ignore[arg-type]

    for extra in (["--json"], []):
        out = _modelhost(guarded, "keys", "create", "--user", str(reader["id"]), "--org", org, "--project", project, *extra)
        assert out.returncode != 0, out.stdout
        said = json.loads(out.stdout)["error"]["message"] if extra else out.stderr
        assert f"not a member of project {project}" in said, said
        assert "sk-" not in out.stdout + out.stderr  # no secret was made
    assert len(guarded.proc.cli("keys", "list")["data"]) == before  # type: ignore[arg-type]

    admin("POST", f"/organization/projects/{project}/users", json={"user_id": reader["id"], "role": "member"})
    key = make_key(guarded.proc, "--user", str(reader["id"]), "--org", org, "--project", project)
    assert _sdk(guarded, key["secret"]).models.list().data
