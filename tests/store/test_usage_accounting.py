"""The ledger: one row per generation, on the organization the request named, with what was generated."""

from __future__ import annotations

import json
import time

import httpx
import openai
from serverproc import ServerProcess, ledger_of, wait_for_entry

HI = [{"role": "user", "content": "Hi"}]


def test_usage_lands_on_the_organization_named_in_the_header(server: ServerProcess, user_key, model: str) -> None:  # type: ignore[no-untyped-def]
    second = server.cli("orgs", "create", "Second team")  # owned by the same (first) user
    default_client = openai.OpenAI(base_url=server.base_url, api_key=user_key.secret, max_retries=0)
    second_client = openai.OpenAI(
        base_url=server.base_url, api_key=user_key.secret, organization=str(second["id"]), max_retries=0
    )
    a = default_client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=2)
    b = second_client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=2)
    assert a.headers["openai-organization"] == user_key.organization
    assert b.headers["openai-organization"] == second["id"]
    entry_a = wait_for_entry(server, a.parse().id)
    entry_b = wait_for_entry(server, b.parse().id)
    assert entry_a.organization_id == user_key.organization
    assert entry_b.organization_id == second["id"]
    assert entry_b.project_id == second["default_project"]
    assert entry_b.api_key_id == user_key.id

    report = server.cli("usage", "--org", str(second["id"]))
    rows = report["data"]
    assert len(rows) == 1 and rows[0]["requests"] == 1  # type: ignore[index]
    assert rows[0]["completion_tokens"] == b.parse().usage.completion_tokens  # type: ignore[index]


def test_ledger_equals_the_usage_clients_saw(server: ServerProcess, make_key, model: str) -> None:  # type: ignore[no-untyped-def]
    project = server.cli("projects", "create", "Accounting", "--org", make_key().organization)
    key = server.cli("keys", "create", "--project", str(project["id"]))
    client = openai.OpenAI(base_url=server.base_url, api_key=str(key["secret"]), max_retries=0)
    seen_prompt = seen_completion = 0
    for i in range(3):
        c = client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Say {i}"}], max_tokens=3)
        seen_prompt += c.usage.prompt_tokens
        seen_completion += c.usage.completion_tokens
    stream = client.chat.completions.create(
        model=model, messages=HI, max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in stream if chunk.usage][0]
    seen_prompt += usage.prompt_tokens
    seen_completion += usage.completion_tokens

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [e for e in ledger_of(server).entries() if e.project_id == project["id"]]
        if len(rows) == 4:
            break
        time.sleep(0.1)
    assert len(rows) == 4
    assert sum(r.prompt_tokens for r in rows) == seen_prompt
    assert sum(r.completion_tokens for r in rows) == seen_completion
    assert len({r.request_id for r in rows}) == 4


def _idle(server: ServerProcess, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(e["slots_busy"] == 0 for e in server.health()["engines"]):  # type: ignore[union-attr,index]
            return True
        time.sleep(0.05)
    return False


def test_disconnect_mid_stream_records_partial_usage_and_frees_the_slot(server: ServerProcess, project_key, model: str) -> None:  # type: ignore[no-untyped-def]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a very long essay."}],
        "max_tokens": 1500,
        "logit_bias": {"2": -100},  # no end-of-turn: it would run to 1500 tokens if not cut
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body,
        headers={"Authorization": f"Bearer {project_key.secret}"}, timeout=60,
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        received = 0
        for line in lines:
            if line.startswith("data: "):
                received += 1
                if received == 5:
                    break
    # Leaving the block closes the connection mid-stream.
    entry = wait_for_entry(server, first["id"])
    assert entry.outcome == "cancelled"
    assert 5 <= entry.completion_tokens < 1500
    assert _idle(server), server.health()


def test_disconnect_of_a_non_streamed_request_records_partial_usage(server: ServerProcess, project_key, model: str) -> None:  # type: ignore[no-untyped-def]
    before = {e.request_id for e in ledger_of(server).entries()}
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a very long essay."}],
        "max_tokens": 1500,
        "logit_bias": {"2": -100},
    }
    try:
        httpx.post(
            f"{server.base_url}/chat/completions", json=body,
            headers={"Authorization": f"Bearer {project_key.secret}"}, timeout=1.0,
        )
    except httpx.ReadTimeout:
        pass  # the client gave up after a second and closed the connection
    deadline = time.monotonic() + 10
    new = []
    while time.monotonic() < deadline and not new:
        new = [e for e in ledger_of(server).entries() if e.request_id not in before and e.completion_tokens > 0 and e.outcome == "cancelled"]
        time.sleep(0.1)
    assert new, "the cut request was not recorded"
    assert new[0].completion_tokens < 1500
    assert _idle(server), server.health()
