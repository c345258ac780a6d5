"""A modelhost process in front of a misbehaving upstream on loopback: every failure reaches the
client as an OpenAI-shaped error (an HTTP status when nothing was streamed yet, an error event
after), with no upstream URL, key or internals in any response or in the server's log; only
validated fields are forwarded; tool calls pass through; a SIGHUP reload lets a running stream
finish."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from serverproc import ServerProcess, ledger_of, wait_for_entry
from support.misbehaving_upstream import SECRET_PATH, MisbehavingUpstream
from support.openapi_spec import validate
from support.proxy import model_ids, openai_model, proxy, reload_models, sse_events

UPSTREAM_KEY = "sk-upstream-for-error-tests-0123456789abcdef"
BEHAVIOURS = [
    "good", "slow", "bad-request", "unprocessable", "context", "unauthorized", "crash", "overloaded", "rate-limited",
    "hang", "hang-mid-stream", "malformed", "malformed-later", "truncated", "error-event", "whole-json", "tool-call",
]


def models_file(up: MisbehavingUpstream, behaviours: list[str]) -> str:
    return "".join(
        openai_model(f"up-{b}", [up.base_url], b, key=True, read_timeout_seconds=1.0, health_interval_seconds=0)
        for b in behaviours
    )


@pytest.fixture(scope="module")
def up() -> Iterator[MisbehavingUpstream]:
    with MisbehavingUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, up: MisbehavingUpstream) -> Iterator[ServerProcess]:
    server = proxy(tmp_path_factory.mktemp("proxy-errors"), models_file(up, BEHAVIOURS), upstream_key=UPSTREAM_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secret(front: ServerProcess) -> str:
    return str(front.cli("keys", "create", "--name", "errors")["secret"])


def post(front: ServerProcess, secret: str, body: dict[str, object], *, stream: bool = False) -> httpx.Response:
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    if stream:
        payload["stream"] = True
    return httpx.post(f"{front.base_url}/chat/completions", json=payload, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def assert_clean(up: MisbehavingUpstream, text: str) -> None:
    for secret in [*up.url_fragments(), UPSTREAM_KEY, "secret_engine", "Traceback"]:
        assert secret not in text, f"{secret!r} leaked: {text[:500]}"


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        ("bad-request", 400, "invalid_value"),
        ("unprocessable", 400, "invalid_value"),
        ("context", 400, "context_length_exceeded"),
        ("unauthorized", 502, "bad_gateway"),
        ("crash", 502, "bad_gateway"),
        ("overloaded", 503, "overloaded"),
        ("rate-limited", 503, "overloaded"),
        ("hang", 504, "gateway_timeout"),
        ("malformed", 502, "bad_gateway"),
        ("truncated", 502, "bad_gateway"),
        ("error-event", 502, "bad_gateway"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_are_openai_errors_with_the_right_status(  # type: ignore[no-untyped-def]
    front: ServerProcess, secret: str, up: MisbehavingUpstream, behaviour: str, status: int, code: str, stream: bool
) -> None:
    response = post(front, secret, {"model": f"up-{behaviour}"}, stream=stream)
    if stream and behaviour in ("truncated", "error-event"):
        # Text was already streamed: the status is sent, the failure arrives as an error event.
        assert response.status_code == 200
        events = list(sse_events(response))
        assert "[DONE]" not in events
        error = json.loads(events[-1])
        validate("ErrorResponse", error)
        assert error["error"]["type"] == "server_error" and error["error"]["code"] == code
        assert_clean(up, response.text)
        return
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    assert body["error"]["code"] == code and body["error"]["message"]
    assert_clean(up, response.text)
    if status == 503:
        assert response.headers["retry-after"] in ("3", "7")


def test_mid_stream_failures_end_the_stream_with_an_error_event(front: ServerProcess, secret: str, up: MisbehavingUpstream) -> None:
    for behaviour in ("hang-mid-stream", "malformed-later"):
        response = post(front, secret, {"model": f"up-{behaviour}"}, stream=True)
        assert response.status_code == 200
        events = list(sse_events(response))
        assert json.loads(events[1])["choices"][0]["delta"]["content"] in ("Hel", "fine so far")
        error = json.loads(events[-1])
        validate("ErrorResponse", error)
        assert error["error"]["code"] in ("gateway_timeout", "bad_gateway")
        assert_clean(up, response.text)


def test_the_sdk_raises_its_own_exceptions_for_forwarded_errors(front: ServerProcess, secret: str) -> None:
    client = openai.OpenAI(base_url=front.base_url, api_key=secret, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="up-context", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.InternalServerError) as server_error:
        client.chat.completions.create(model="up-crash", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert server_error.value.status_code == 502


def test_failed_and_completed_requests_are_in_the_ledger_once(front: ServerProcess, secret: str) -> None:
    ledger = ledger_of(front)

    def failed_rows() -> int:
        return sum(1 for e in ledger.entries() if e.model == "up-bad-request" and e.outcome == "failed")

    before = failed_rows()
    assert post(front, secret, {"model": "up-bad-request"}).status_code == 400
    deadline = time.monotonic() + 10
    while failed_rows() != before + 1:
        assert time.monotonic() < deadline, "no ledger row for the failed request"
        time.sleep(0.1)
    completed = post(front, secret, {"model": "up-good"})
    entry = wait_for_entry(front, completed.json()["id"])
    assert (entry.prompt_tokens, entry.completion_tokens, entry.outcome) == (11, 2, "completed")  # the upstream's usage
    assert completed.json()["usage"]["total_tokens"] == 13
    assert failed_rows() == before + 1


def test_only_validated_fields_are_forwarded(front: ServerProcess, secret: str, up: MisbehavingUpstream) -> None:
    body = {
        "model": "up-good",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"x": 1}}], "secret_note": 1}],
        "grammar": 'root ::= "x"',
        "chat_template": "{{ raise }}",
        "user": "end-user-42",
        "n_discard": 5,
        "base_url": "http://169.254.169.254/v1",  # no request field can point modelhost at another server
        "api_base": "http://169.254.169.254/v1",
        "temperature": 0.2,
        "max_completion_tokens": 3,
    }
    before = len(up.bodies)
    response = post(front, secret, body)
    assert response.status_code == 200, response.text
    sent = up.bodies[-1]
    assert sent["model"] == "good" and sent["temperature"] == 0.2 and sent["max_tokens"] == 3
    # Rebuilt from the validated conversation (pipeline/forwarding.py): text parts arrive as their text.
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert len(up.bodies) == before + 1  # and it went to the configured upstream
    for field in ("grammar", "chat_template", "user", "n_discard", "max_completion_tokens", "base_url", "api_base"):
        assert field not in sent
    assert up.headers[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_images_are_refused_before_reaching_the_upstream(front: ServerProcess, secret: str, up: MisbehavingUpstream) -> None:
    before = len(up.bodies)
    image = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}}
    response = post(front, secret, {"model": "up-good", "messages": [{"role": "user", "content": [image]}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].content[0].type"
    assert len(up.bodies) == before


def test_tool_calls_pass_through_streamed_and_whole(front: ServerProcess, secret: str) -> None:
    client = openai.OpenAI(base_url=front.base_url, api_key=secret, max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    whole = client.chat.completions.with_raw_response.create(model="up-tool-call", messages=[{"role": "user", "content": "weather?"}], tools=tools)  # type: ignore[arg-type]
    validate("CreateChatCompletionResponse", whole.http_response.json())
    choice = whole.parse().choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_up1", "get_weather", {"city": "Paris"})

    response = post(front, secret, {"model": "up-tool-call", "tools": tools}, stream=True)
    chunks = [json.loads(e) for e in sse_events(response) if e != "[DONE]"]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    pieces = [c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"]]
    calls = [p[0] for p in pieces if p]
    assert calls[0]["id"] == "call_up1" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_server_that_ignores_stream_still_streams_to_the_client(front: ServerProcess, secret: str) -> None:
    response = post(front, secret, {"model": "up-whole-json", "stream_options": {"include_usage": True}}, stream=True)
    chunks = [json.loads(e) for e in sse_events(response) if e != "[DONE]"]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "whole answer"
    assert chunks[-1]["usage"]["total_tokens"] == 7


def test_a_sighup_reload_lets_a_running_stream_finish(front: ServerProcess, secret: str, up: MisbehavingUpstream, tmp_path: Path) -> None:
    result: dict[str, object] = {}

    def stream() -> None:
        with httpx.stream(
            "POST", f"{front.base_url}/chat/completions", headers={"Authorization": f"Bearer {secret}"}, timeout=30,
            json={"model": "up-slow", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ) as response:
            result["status"] = response.status_code
            result["events"] = list(sse_events(response))

    streaming = threading.Thread(target=stream)
    streaming.start()
    try:
        up_before = up.requests["slow"]
        while up.requests["slow"] == up_before:
            threading.Event().wait(0.05)
        remaining = [b for b in BEHAVIOURS if b != "slow"]
        reload_models(front, models_file(up, remaining), lambda: "up-slow" not in model_ids(front, secret))
    finally:
        streaming.join(30)
        (front.home / "models.toml").write_text(models_file(up, BEHAVIOURS))
    events = result["events"]
    assert result["status"] == 200 and isinstance(events, list) and events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "".join(f"w{i} " for i in range(10))
    gone = post(front, secret, {"model": "up-slow"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    reload_models(front, models_file(up, BEHAVIOURS), lambda: "up-slow" in model_ids(front, secret))
    assert "models file reloaded" in front.log()


def test_the_server_log_holds_no_upstream_url_key_or_internals(front: ServerProcess, up: MisbehavingUpstream) -> None:
    log = (front.home / "server.log").read_text(errors="replace")
    assert "replica 1" in log  # the upstream is named by position only
    for secret in [up.base_url, f"127.0.0.1:{up.port}", UPSTREAM_KEY, SECRET_PATH]:
        assert secret not in log
