"""N–U. Semantics and operations: metrics and docs protected, no model upload, health, binding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from serverproc import MODEL

from .conftest import METRICS_TOKEN, Guarded, app_routes, engine_state


def test_Q_metrics_are_off_without_a_token(bare: Guarded) -> None:
    for headers in ({}, bare.auth):
        response = httpx.get(f"{bare.proc.root_url}/metrics", headers=headers)
        assert response.status_code == 404 and response.json()["error"]["message"] == "Invalid URL (GET /metrics)"


def test_Q_metrics_need_the_metrics_token_and_an_api_key_is_not_it(guarded: Guarded) -> None:
    url = f"{guarded.proc.root_url}/metrics"
    for headers in ({}, guarded.auth, {"Authorization": f"Bearer {METRICS_TOKEN}x"}, {"Authorization": METRICS_TOKEN}):
        assert httpx.get(url, headers=headers).status_code == 401
    response = httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("modelhost_http_requests_total", "modelhost_http_request_duration_seconds_bucket", "modelhost_engine_slots_total",
                 "modelhost_engine_slots_busy", "modelhost_engine_queue_depth", "modelhost_http_requests_in_flight"):
        assert name in text, name


def test_Q_metrics_count_requests_tokens_and_latencies(guarded: Guarded) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    for stream in (False, True):
        assert httpx.post(f"{guarded.proc.base_url}/chat/completions", json={**chat, "stream": stream}, headers=guarded.auth, timeout=60).status_code == 200
    text = httpx.get(f"{guarded.proc.root_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert f'modelhost_http_requests_total{{method="POST",model="{MODEL}",route="/v1/chat/completions",status="200"}}' in text
    for name in ("modelhost_prompt_tokens_total", "modelhost_completion_tokens_total", "modelhost_time_to_first_token_seconds_count",
                 "modelhost_time_per_output_token_seconds_count", "modelhost_generations_total"):
        assert f'{name}{{' in text, name
    assert 'route="unmatched"' not in text or "/v1/nothing" not in text  # raw paths never become labels


def test_Q_docs_are_off_and_the_openapi_document_needs_a_key(guarded: Guarded) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(f"{guarded.proc.root_url}{path}").status_code == 404
    assert httpx.get(f"{guarded.proc.root_url}/openapi.json").status_code == 401
    document = httpx.get(f"{guarded.proc.root_url}/openapi.json", headers=guarded.auth).json()
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearerAuth": []}]
    assert {"400", "401", "413", "429", "503"} <= set(chat["responses"]) and "422" not in chat["responses"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]


def test_P_there_is_no_model_upload_or_pull_api() -> None:
    # Under /v1/models and /v1/engines nothing but GET; elsewhere only the Administration API's
    # project model_permissions, which choose among the operator's models and add none.
    mutating = [(m, p) for m, p in app_routes() if m != "GET" and ("model" in p or "engine" in p)]
    assert all(p == "/v1/organization/projects/{project_id}/model_permissions" for _, p in mutating), mutating


def test_S_one_bad_request_cannot_kill_the_service_and_health_reflects_the_engine(guarded: Guarded) -> None:
    url = f"{guarded.proc.base_url}/chat/completions"
    hostile = [b"{" * 100_000, b'{"model": "' + MODEL.encode() + b'", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
               b'{"model": 1e999999, "messages": []}', b"\xff" * 1000, b'{"messages": [{"role": "user", "content": {"a": {"b": []}}}]}']
    for body in hostile:
        response = httpx.post(url, content=body, headers={**guarded.auth, "Content-Type": "application/json"}, timeout=30)
        assert 400 <= response.status_code < 500, (body[:40], response.status_code)
    assert httpx.get(f"{guarded.proc.root_url}/health", timeout=5).json() == {"status": "ok"}  # liveness, to anyone
    state = engine_state(guarded.proc)  # the details, for the metrics token
    assert state["model"] == MODEL and state["slots_total"] == 2 and state["slots_busy"] == 0
    assert httpx.get(f"{guarded.proc.base_url}/models", headers=guarded.auth).status_code == 200


def test_U_binds_loopback_by_default() -> None:
    from modelhost.config import Settings

    assert Settings().host == "127.0.0.1"


def test_U_exposing_the_server_without_any_key_is_refused(tmp_path: Path) -> None:
    env = {"MODELHOST_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "modelhost", "serve", "--host", "0.0.0.0", "--port", "1"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no API key" in out.stderr and "modelhost keys create" in out.stderr
