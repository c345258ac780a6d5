"""The Batch API from real clients against the session's server (the bundled model): the current Node
SDK uploads a JSONL file, creates the batch, polls it until it ends and downloads its output
(node_batches.mjs, run by runner.py); the Python SDK examples of README.md ("Files and Batches") and
docs/batches.md run as written. Every line asks for a few tokens. The Node client skips only when npm's
registry is unreachable; any other failure fails. Assertions are on the protocol, not on what the model says.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import openai
import pytest

from clients import runner
from serverproc import ServerProcess, wait_for_entry

REPO = Path(__file__).resolve().parents[2]


def python_blocks(document: str, heading: str) -> list[str]:
    """The ```python blocks of `document`'s section `heading` (up to the next heading of its level)."""
    level = heading.split(" ")[0]
    text = (REPO / document).read_text()
    assert f"\n{heading}\n" in text, f"{document} has no section {heading!r}"
    section = text.split(f"\n{heading}\n", 1)[1].split(f"\n{level} ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_example(code: str, client: openai.OpenAI, model: str) -> str:
    """What the example prints, run with the `client` and `MODEL` the README defines above it."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "<example>", "exec"), {"client": client, "MODEL": model})  # noqa: S102 - our own docs
    return printed.getvalue()


@pytest.fixture(scope="module")
def node_run(server: ServerProcess, project_key, model: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    env = {
        "MODELHOST_BASE_URL": server.base_url,
        "MODELHOST_API_KEY": project_key.secret,
        "MODELHOST_ORG": project_key.organization,
        "MODELHOST_MODEL": model,
    }
    try:
        runner.ensure_node_sdk(runner.NODE_SCRIPTS["node_batches.mjs"])
    except runner.ClientUnavailable as exc:
        pytest.skip(str(exc))
    except runner.ClientInstallError as exc:
        if runner.registry_reachable("npm"):
            raise
        pytest.skip(f"the npm registry is unreachable, so the Node SDK cannot be installed: {exc}")
    return runner.run_node("node_batches.mjs", env, timeout=300)


def test_node_sdk_uploads_runs_and_downloads_a_batch(node_run: dict[str, Any], model: str, server: ServerProcess) -> None:
    upload, created, batch = node_run["input"], node_run["created"], node_run["batch"]
    assert upload["id"].startswith("file-") and upload["purpose"] == "batch" and upload["bytes"] == upload["expected_bytes"]
    assert created["id"].startswith("batch_") and created["status"] == "validating"
    assert created["input_file_id"] == upload["id"] and created["metadata"] == {"client": "node"}
    assert created["id"] in node_run["listed"]

    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert batch["model"] == model and batch["completed_at"] >= batch["in_progress_at"] >= batch["created_at"]
    assert "error_file_id" not in batch or batch["error_file_id"] is None
    assert node_run["output_file"]["id"] == batch["output_file_id"] and node_run["output_file"]["purpose"] == "batch_output"

    output = node_run["output"]
    assert sorted(line["custom_id"] for line in output) == ["a", "b"]
    for line in output:
        response = line["response"]
        assert line["id"].startswith("batch_req_") and line["error"] is None and response["status_code"] == 200
        assert response["body"]["object"] == "chat.completion" and response["body"]["model"] == model
        assert 0 < response["body"]["usage"]["completion_tokens"] <= 3
        entry = wait_for_entry(server, response["body"]["id"])  # each line is in the ledger, as batch work
        assert entry.batch and entry.completion_tokens == response["body"]["usage"]["completion_tokens"]
    assert batch["usage"]["input_tokens"] == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    assert batch["usage"]["output_tokens"] == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)


def test_the_readmes_files_and_batches_example_runs_as_written(client: openai.OpenAI, model: str) -> None:
    [example] = python_blocks("README.md", "## Files and Batches")
    printed = run_example(example, client, model).splitlines()
    print("\n".join(printed))  # what the README shows (pytest -s)
    assert printed[0] == "completed BatchRequestCounts(completed=2, failed=0, total=2)"
    assert [line.split()[0] for line in printed[1:]] == ["q0", "q1"]


def test_the_batch_docs_example_runs_as_written(client: openai.OpenAI, model: str) -> None:
    [example] = python_blocks("docs/batches.md", "## The SDK flow")
    printed = run_example(example, client, model).splitlines()
    print("\n".join(printed))  # what docs/batches.md shows (pytest -s)
    assert printed[:2] == ["validating", "completed BatchRequestCounts(completed=1, failed=1, total=2) True"]
    assert printed[2:5] == ["fine 200 chat.completion", "no-choices 400 n", "batch_output"]
    assert printed[5] == "409 invalid_request_error Cannot cancel a batch with status 'completed'."
