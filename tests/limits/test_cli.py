"""`modelhost limits` and `modelhost quotas`: scriptable with --json, plain tables without."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def modelhost(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELHOST_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "modelhost", *args], env=env, capture_output=True, text=True, timeout=60)


def test_limits_and_quotas_set_and_show(tmp_path: Path) -> None:
    org = json.loads(modelhost(tmp_path, "orgs", "list", "--json").stdout)["data"][0]["id"]
    project = json.loads(modelhost(tmp_path, "projects", "create", "CLI", "--org", org, "--json").stdout)["id"]

    done = modelhost(tmp_path, "limits", "set", "--org", org, "--rpm", "90", "--concurrency", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["max_requests_per_1_minute"] == 90
    # A project cannot be lifted above its organization (0 is no limit): the organization's comes first.
    above = modelhost(tmp_path, "limits", "set", "--project", project, "--tpm", "0", "--json")
    assert above.returncode == 2
    assert "'max_tokens_per_1_minute': 0 (no limit) is above 10000000" in json.loads(above.stdout)["error"]["message"]
    done = modelhost(tmp_path, "limits", "set", "--project", project, "--tpm", "5000", "--rpm", "inherit", "--json")
    effective = json.loads(done.stdout)["effective"][0]
    assert (effective["max_requests_per_1_minute"], effective["max_tokens_per_1_minute"], effective["max_concurrent_requests"]) == (90, 5000, 2)
    table = modelhost(tmp_path, "limits", "show", "--project", project).stdout
    assert table.splitlines()[0].split()[:3] == ["model", "max_requests_per_1_minute", "max_tokens_per_1_minute"]

    quota = json.loads(modelhost(tmp_path, "quotas", "set", "--project", project, "--unit", "usd", "--hard", "5", "--json").stdout)
    assert (quota["unit"], quota["period"], quota["hard_limit"], quota["used"]) == ("usd", "month", 5.0, 0.0)
    shown = json.loads(modelhost(tmp_path, "quotas", "show", "--json").stdout)["data"]
    assert [(q["scope_id"], q["hard_limit"]) for q in shown] == [(project, 5.0)]


def test_mistakes_exit_2_with_a_json_error(tmp_path: Path) -> None:
    wrong = modelhost(tmp_path, "limits", "set", "--project", "proj_missing", "--rpm", "1", "--json")
    assert wrong.returncode == 2
    assert "No project 'proj_missing'" in json.loads(wrong.stdout)["error"]["message"]
    nothing = modelhost(tmp_path, "quotas", "set", "--project", "proj_missing", "--json")
    assert nothing.returncode == 2 and "--hard" in json.loads(nothing.stdout)["error"]["message"]
    assert modelhost(tmp_path, "limits", "set", "--rpm", "1").returncode == 2  # argparse: a scope is required
