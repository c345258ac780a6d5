"""`modelhost models check` and `modelhost serve` with a models file that cannot be served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def modelhost(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "MODELHOST_MODELS_FILE"}
    environment.update(MODELHOST_HOME=str(tmp_path), **env)
    return subprocess.run([sys.executable, "-m", "modelhost", *args], env=environment, capture_output=True, text=True, timeout=60)


def test_check_lists_the_models_of_a_good_file(tmp_path: Path) -> None:
    out = modelhost(tmp_path, "models", "check", str(EXAMPLES / "models-pool.toml"), "--json", POOL_API_KEY="sk-x")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [m["id"] for m in listed["data"]] == ["smol-pool", "smol-peer", "smol-local"]
    assert listed["data"][0]["aliases"] == "pool" and listed["data"][0]["backend"] == "openai"


def test_a_file_that_cannot_be_served_is_one_clear_line_from_check_and_from_serve(tmp_path: Path) -> None:
    bad = tmp_path / "models.toml"
    bad.write_text('[[models]]\nid = "big"\nbackend = { type = "vllm", model = "org/big" }\n')
    check = modelhost(tmp_path, "models", "check", str(bad))
    serve = modelhost(tmp_path, "serve", "--port", "0", MODELHOST_MODELS_FILE=str(bad))
    for out in (check, serve):
        assert out.returncode == 2
        assert f"error: {bad}: model `big` (models[0]), field `backend.type`:" in out.stderr
        assert "pip install 'modelhost[vllm]'" in out.stderr and "Traceback" not in out.stderr
    missing = tmp_path / "gone.toml"
    bad.write_text(f'[[models]]\nid = "g"\nbackend = {{ type = "llamacpp", path = "{missing}" }}\n')
    out = modelhost(tmp_path, "models", "check", str(bad))
    assert out.returncode == 2 and f"field `backend.path`: {missing} is not a file." in out.stderr
