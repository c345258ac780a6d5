"""The Batch API from the current Node SDK against the session's server (the bundled model): upload a
JSONL file, create the batch, poll it until it ends, download its output (node_batches.mjs, run by
runner.py). Two lines of at most three tokens each. The client skips only when npm's registry is
unreachable; any other failure fails. Assertions are on the protocol, not on what the model says.
"""

from __future__ import annotations

from typing import Any

import pytest

from clients import runner
from serverproc import ServerProcess, wait_for_entry


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
