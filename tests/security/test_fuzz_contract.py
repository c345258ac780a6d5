"""Schemathesis over the server's own OpenAPI document: every operation, every check, no 5xx.

Two bounded runs against the `guarded` server (loopback), each a subprocess of the `schemathesis`
CLI with the hooks in fuzz_hooks.py (which keep generations to a few tokens on the real model):

- the inference operations with an inference key: all phases, all checks;
- the Administration API (/v1/organization/…) with an admin key: all phases, all checks but
  `positive_data_acceptance`, since schema-valid admin requests are still refused by rules a schema
  cannot state (a cursor must name an existing object; the last owner cannot leave; `limit` depends
  on `bucket_width`) — every other check, including not_a_server_error and response schema
  conformance, runs there too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import Guarded, make_key

HERE = Path(__file__).parent
MAX_EXAMPLES = os.environ.get("MODELHOST_FUZZ_EXAMPLES", "12")


def _schemathesis(guarded: Guarded, key: str, *extra: str) -> tuple[int, str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{guarded.proc.root_url}/openapi.json",
        "-H", f"Authorization: Bearer {key}",
        "--checks", "all", "--max-examples", MAX_EXAMPLES, "--workers", "1",
        "--request-timeout", "90", "--max-response-time", "60", "--seed", "6", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(HERE), "SCHEMATHESIS_HOOKS": "fuzz_hooks", "NO_COLOR": "1"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    return out.returncode, out.stdout + out.stderr


def _cases(output: str) -> int:
    match = re.search(r"(\d+) generated", output)
    return int(match.group(1)) if match else 0


def test_fuzz_inference_operations_zero_5xx_zero_schema_violations(guarded: Guarded) -> None:
    # All checks but `positive_data_acceptance`: OpenAI's own rules between fields (best_of >= n,
    # tool_choice needs tools, top_logprobs needs logprobs, stream_options needs stream) and per
    # model (token ids within its vocabulary, the embedding model's one size, the configured n cap)
    # refuse requests that a JSON schema alone calls valid. Rejections are still checked to be 4xx
    # in the error envelope, and everything accepted to answer in the documented shape.
    code, output = _schemathesis(
        guarded, guarded.key, "--exclude-path-regex", "^/v1/organization", "--exclude-checks", "positive_data_acceptance"
    )
    print(output[-1500:])
    assert code == 0, output[-6000:]
    assert _cases(output) >= 200


def test_fuzz_administration_api_zero_5xx_zero_schema_violations(guarded: Guarded) -> None:
    admin = make_key(guarded.proc, "--kind", "admin")["secret"]
    code, output = _schemathesis(
        guarded, admin, "--include-path-regex", "^/v1/organization", "--exclude-checks", "positive_data_acceptance"
    )
    print(output[-1500:])
    assert code == 0, output[-6000:]
    assert _cases(output) >= 200
