"""The admin CLI: scriptable (`--json`), working on the data directory named by MODELHOST_HOME."""

from __future__ import annotations

from pathlib import Path

from serverproc import ServerProcess


def test_first_start_creates_an_organization_and_says_how_to_make_a_key(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "fresh").start()
    try:
        log = proc.log()
        assert "First start: created organization org-" in log
        assert "modelhost keys create" in log
        assert (tmp_path / "fresh" / "modelhost.db").exists()
        orgs = proc.cli("orgs", "list")["data"]
        assert len(orgs) == 1  # type: ignore[arg-type]
    finally:
        proc.stop()


def test_keys_create_prints_the_secret_once(server: ServerProcess) -> None:
    key = server.cli("keys", "create", "--name", "once")
    assert str(key["secret"]).startswith("sk-proj-")
    assert len(str(key["secret"])) >= len("sk-proj-") + 43  # 256 bits
    assert str(key["organization"]).startswith("org-") and str(key["project"]).startswith("proj_")
    listed = [k for k in server.cli("keys", "list")["data"] if k["id"] == key["id"]]  # type: ignore[union-attr,index]
    assert listed and "secret" not in listed[0]
    assert listed[0]["redacted_value"].endswith(str(key["secret"])[-4:])
    assert str(key["secret"]) not in str(server.cli("keys", "list"))
    assert key["secret"] not in (server.home / "modelhost.db").read_bytes().decode("latin-1")


def test_user_key_has_user_prefix(server: ServerProcess) -> None:
    key = server.cli("keys", "create", "--kind", "user")
    assert str(key["secret"]).startswith("sk-") and not str(key["secret"]).startswith("sk-proj-")


def test_users_and_projects_commands(server: ServerProcess) -> None:
    org = server.cli("orgs", "create", "CLI org")
    user = server.cli("users", "create", "cli@example.com", "--org", str(org["id"]), "--role", "reader")
    assert user["default_organization"] == org["id"]
    project = server.cli("projects", "create", "CLI project", "--org", str(org["id"]))
    names = {p["name"] for p in server.cli("projects", "list", "--org", str(org["id"]))["data"]}  # type: ignore[union-attr,index]
    assert names == {"Default project", "CLI project"}
    archived = server.cli("projects", "archive", str(project["id"]))
    assert archived["status"] == "archived"
    users = server.cli("users", "list")["data"]
    assert any(u["email"] == "cli@example.com" and u["organizations"] == {org["id"]: "reader"} for u in users)  # type: ignore[union-attr,index]
