"""K. Leakage: no key, key hash, Authorization header or prompt in logs, metrics or error bodies."""

from __future__ import annotations

import hashlib
import json
import re

import httpx

from serverproc import MODEL, raw_request

from .conftest import METRICS_TOKEN, Guarded

CANARY = "canary-prompt-7f3a9c-do-not-log"


def test_K1_K2_K4_logs_metrics_and_errors_never_carry_keys_hashes_or_prompts(guarded: Guarded) -> None:
    proc = guarded.proc
    wrong = "sk-proj-" + "w" * 43
    chat = {"model": MODEL, "messages": [{"role": "user", "content": CANARY}], "max_tokens": 3}
    ok = httpx.post(f"{proc.base_url}/chat/completions", json=chat, headers=guarded.auth, timeout=60)
    assert ok.status_code == 200, ok.text
    streamed = httpx.post(f"{proc.base_url}/chat/completions", json={**chat, "stream": True}, headers=guarded.auth, timeout=60)
    assert streamed.status_code == 200
    refused = httpx.post(f"{proc.base_url}/chat/completions", json=chat, headers={"Authorization": f"Bearer {wrong}"}, timeout=30)
    bad = httpx.post(f"{proc.base_url}/chat/completions", json={**chat, "temperature": CANARY}, headers=guarded.auth, timeout=30)
    # K4: a field name with a newline and an escape sequence (unknown fields are logged by name).
    forged = {**chat, "x\nFAKE LOG LINE \x1b[31m": 1}
    assert httpx.post(f"{proc.base_url}/chat/completions", json=forged, headers=guarded.auth, timeout=60).status_code == 200
    raw_request(proc, "GET", "/v1/models", [(b"Authorization", b"Bearer " + wrong.encode() + b"\x1b[2J")])
    metrics = httpx.get(f"{proc.root_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text

    secrets = [guarded.key, wrong, METRICS_TOKEN]
    forbidden = secrets + [hashlib.sha256(s.encode()).hexdigest() for s in secrets] + [CANARY]
    for body in (refused.text, bad.text):
        for needle in forbidden:
            assert needle not in body, needle
    log = (proc.home / "server.log").read_text(errors="replace")
    for text, where in ((log, "server log"), (metrics, "metrics")):
        for needle in forbidden:
            assert needle not in text, f"{needle[:12]}… in {where}"
        assert not re.search(r"(?i)authorization|bearer ", text), where
    assert "\x1b" not in log and "\nFAKE LOG LINE" not in log
    access = [json.loads(line) for line in log.splitlines() if line.startswith('{"ts"')]
    chats = [a for a in access if a["route"] == "/v1/chat/completions" and a["status"] == 200]
    assert chats and all(a["organization"] == guarded.organization and a["api_key_id"] == guarded.key_id for a in chats)
    assert {a["model"] for a in chats} == {MODEL} and all(a["prompt_tokens"] > 0 for a in chats)
    assert any(a["completion_tokens"] > 0 for a in chats)
    assert any(a["ttft_ms"] is not None for a in chats) and all(a["duration_ms"] > 0 for a in chats)
    assert any(a["status"] == 401 and a["api_key_id"] is None for a in access)


def test_K_client_request_id_is_honoured_and_a_hostile_one_replaced(guarded: Guarded) -> None:
    good = httpx.get(f"{guarded.proc.base_url}/models", headers={**guarded.auth, "X-Request-Id": "trace-abc.123"})
    assert good.headers["x-request-id"] == "trace-abc.123"
    status, _ = raw_request(guarded.proc, "GET", "/v1/models", [(b"X-Request-Id", b"a\x1bb" + b"c" * 500)])
    hostile = httpx.get(f"{guarded.proc.base_url}/models", headers={**guarded.auth, "X-Request-Id": "x" * 500})
    assert hostile.headers["x-request-id"].startswith("req_")
