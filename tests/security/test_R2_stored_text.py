"""R2-16 (found by fuzzing): text a client sends that the store keeps or looks up is refused or kept as sent.

PostgreSQL's `text` cannot hold U+0000, so `POST /v1/organization/projects {"name": "p\\u0000x"}` was a
500 there (and stored on SQLite); an invite's email, a path id, a query cursor the same. Every such
string (bodies, nested objects, lists, query and path parameters: `protocol.common.StoredStr`,
`api/admin/deps.stored_path_params`; CLI arguments: `cli._unstorable_argument`) is now a 400
`invalid_value` naming the field when it holds a NUL or an unpaired surrogate, and stored as sent
otherwise (control characters included), on SQLite and PostgreSQL alike. Generation requests' `user`
and message text are not stored (the ledger keeps the key's ids), so NUL stays allowed there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from modelhost import cli
from serverproc import MODEL, ServerProcess
from store.databases import database_url, drop_schema

LEAN = {"MODELHOST_EMBEDDING_MODEL_ENABLED": "false", "MODELHOST_CHAT_MODEL_EMBEDDINGS": "false"}


@dataclass(frozen=True)
class AdminServer:
    """A server on one kind of database, with an admin key and a project of its organization."""

    kind: str
    proc: ServerProcess
    admin_key: str
    organization: str
    project: str

    def send(self, method: str, path: str, body: object = None) -> httpx.Response:
        """`body` goes as ASCII JSON: a NUL or a lone surrogate travels escaped, as the SDKs send it."""
        content = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"}
        return httpx.request(method, self.proc.base_url + path, content=content, headers=headers, timeout=30)

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.proc.base_url, admin_api_key=self.admin_key, api_key="unused", max_retries=0)


@contextmanager
def admin_server(kind: str, home: Path) -> Iterator[AdminServer]:
    """A fresh database of `kind` (its own PostgreSQL schema, dropped after) and a server on it."""
    url, schema = database_url(kind, home)
    proc = ServerProcess(home / "home", env_overrides={**LEAN, "MODELHOST_DATABASE_URL": url})
    try:
        proc.start()
        key = proc.cli("keys", "create", "--kind", "admin", "--name", "stored-text")
        server = AdminServer(kind, proc, str(key["secret"]), str(key["organization"]), "")
        project = server.send("POST", "/organization/projects", {"name": "stored text"})
        assert project.status_code == 200, project.text
        yield AdminServer(kind, proc, server.admin_key, server.organization, project.json()["id"])
    finally:
        proc.stop()
        drop_schema(schema)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminServer]:
    with admin_server(request.param, tmp_path_factory.mktemp(f"stored-{request.param}")) as server:
        yield server


NUL = "\u0000"
# (method, path, body, the param the 400 names); PROJECT is the server's project id.
REFUSED = [
    ("POST", "/organization/projects", {"name": f"p{NUL}x"}, "name"),
    ("POST", "/organization/projects/PROJECT", {"name": NUL}, "name"),
    ("POST", "/organization/invites", {"email": f"a{NUL}@x.org", "role": "reader"}, "email"),
    ("POST", "/organization/invites", {"email": "a@x.org", "role": "reader", "projects": [{"id": f"proj_{NUL}", "role": "member"}]}, "projects[0].id"),
    # A nested object's id with a lone surrogate: the wire model's own check skipped nested plain models.
    ("POST", "/organization/invites", {"email": "b@x.org", "role": "reader", "projects": [{"id": "proj_\ud800", "role": "member"}]}, "projects[0].id"),
    ("POST", "/organization/admin_api_keys", {"name": f"k{NUL}"}, "name"),
    ("POST", "/organization/projects/PROJECT/service_accounts", {"name": f"robot{NUL}"}, "name"),
    ("POST", "/organization/projects/PROJECT/users", {"user_id": f"user-{NUL}", "role": "member"}, "user_id"),
    ("POST", "/organization/projects/PROJECT/users", {"email": f"u{NUL}@x.org", "role": "member"}, "email"),
    ("POST", "/organization/projects/PROJECT/model_permissions", {"mode": "allow_list", "model_ids": [MODEL, f"m{NUL}"]}, "model_ids[1]"),
    ("POST", f"/organization/projects/PROJECT/rate_limits/rl-{MODEL}%00", {"max_requests_per_1_minute": 5}, "rate_limit_id"),
    ("GET", "/organization/projects/proj_%00", None, "project_id"),
    ("POST", "/organization/projects/proj_%00/archive", None, "project_id"),
    ("GET", "/organization/users/user-%00", None, "user_id"),
    ("DELETE", "/organization/invites/invite-%00", None, "invite_id"),
    ("GET", "/organization/admin_api_keys/key_%00", None, "key_id"),
    ("GET", "/organization/projects/PROJECT/api_keys/key_%00", None, "api_key_id"),
    ("GET", "/organization/projects/PROJECT/service_accounts/svc_%00", None, "service_account_id"),
    ("GET", "/organization/projects?after=proj_%00", None, "after"),
    ("GET", "/organization/users?emails=a%00@x.org", None, "emails"),
    ("GET", "/organization/audit_logs?actor_emails[]=a%00", None, "actor_emails"),
    ("GET", "/organization/usage/completions?start_time=0&project_ids=proj_%00", None, "project_ids"),
    ("GET", "/organization/usage/completions?start_time=0&page=%00", None, "page"),
    ("GET", "/organization/projects/PROJECT/rate_limits?after=rl-%00", None, "after"),
]


@pytest.mark.parametrize(("method", "path", "body", "param"), REFUSED, ids=[f"{m} {p} {param}" for m, p, _, param in REFUSED])
def test_R2_16_a_nul_in_admin_text_is_a_400_naming_the_field_on_both_stores(
    served: AdminServer, method: str, path: str, body: object, param: str
) -> None:
    reply = served.send(method, path.replace("PROJECT", served.project), body)
    assert reply.status_code == 400, (served.kind, reply.status_code, reply.text)
    error = reply.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_value", param), error
    assert ("NUL" in error["message"]) != ("surrogate" in error["message"]), error


def test_R2_16_the_sdk_gets_a_bad_request_error_naming_the_field(served: AdminServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        served.sdk().admin.organization.projects.create(name=f"p{NUL}x")
    assert info.value.status_code == 400 and info.value.param == "name" and info.value.code == "invalid_value"


ODD_BUT_STORABLE = ["p\u0001\u001f\u007fx", "tab\tnew\nline\rcr", "\u0080\u009f c1", "\u2028\u2029", "\ufeff\ufffe\uffff", "😀 \U0010ffff"]


@pytest.mark.parametrize("text", ODD_BUT_STORABLE, ids=[ascii(t) for t in ODD_BUT_STORABLE])
def test_R2_16_other_control_characters_are_stored_as_sent_on_both_stores(served: AdminServer, text: str) -> None:
    project = served.send("POST", "/organization/projects", {"name": text})
    assert project.status_code == 200, project.text
    project_id = project.json()["id"]
    assert served.send("GET", f"/organization/projects/{project_id}").json()["name"] == text
    renamed = served.send("POST", f"/organization/projects/{project_id}", {"name": text + "!"})
    assert renamed.status_code == 200 and served.send("GET", f"/organization/projects/{project_id}").json()["name"] == text + "!"

    account = served.send("POST", f"/organization/projects/{project_id}/service_accounts", {"name": text})
    assert account.status_code == 200, account.text
    stored = served.send("GET", f"/organization/projects/{project_id}/service_accounts/{account.json()['id']}")
    assert stored.json()["name"] == text

    key = served.send("POST", "/organization/admin_api_keys", {"name": text})
    assert key.status_code == 200, key.text
    assert served.send("GET", f"/organization/admin_api_keys/{key.json()['id']}").json()["name"] == text

    # An email has no white space or control characters (its pattern): refused naming it, else kept as sent.
    email = f"{text}@x.org"
    invite = served.send("POST", "/organization/invites", {"email": email, "role": "reader"})
    if any(c.isspace() or c < " " or c == "\x7f" for c in text):
        assert invite.status_code == 400 and invite.json()["error"]["param"] == "email", invite.text
    else:
        assert invite.status_code == 200, invite.text
        assert served.send("GET", f"/organization/invites/{invite.json()['id']}").json()["email"] == email


def test_R2_16_an_email_with_a_control_character_is_refused_not_stored_stripped(served: AdminServer) -> None:
    """Invites stripped what Python counts as white space, the pattern does not: \x1c-\x1f went silently."""
    refused = served.send("POST", "/organization/invites", {"email": "\x1fstripped@x.org", "role": "reader"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "email", refused.text


def test_R2_16_cli_arguments_the_store_cannot_hold_are_an_error_not_a_traceback(
    served: AdminServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bytes that are not UTF-8 reach Python as lone surrogates (b"\xff" -> "\udcff"): a UnicodeEncodeError before.
    env = served.proc.env()
    for args in (
        [b"projects", b"create", b"p\xffx", b"--org", served.organization.encode()],
        [b"users", b"create", b"a\xff@x.org"],
        [b"projects", b"archive", b"proj_\xff"],
    ):
        out = subprocess.run([sys.executable, "-m", "modelhost", *args], env=env, capture_output=True, timeout=60)
        stderr = out.stderr.decode(errors="replace")
        assert out.returncode == 2 and "Traceback" not in stderr and "is not valid UTF-8" in stderr, (args, stderr)

    # No argv can hold a NUL, but `main(argv)` can: refused the same way, before the store is opened.
    for name, value in (("HOME", str(served.proc.home)), ("DATABASE_URL", env["MODELHOST_DATABASE_URL"])):
        monkeypatch.setenv(f"MODELHOST_{name}", value)
    assert cli.main(["invites", "create", f"a{NUL}@x.org", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["message"].startswith("argument email cannot hold a NUL")

    # Everything else is stored as sent.
    created = served.proc.cli("projects", "create", "cli \u0001\u007f name", "--org", served.organization)
    assert created["name"] == "cli \u0001\u007f name"
