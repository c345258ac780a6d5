"""Bad input gets OpenAI's 400 envelope naming the parameter: never FastAPI's 422, never a 500."""

from __future__ import annotations

import httpx
import openai
import pytest

from serverproc import ServerProcess, raw_request

HI = [{"role": "user", "content": "Hi"}]


def _post(server: ServerProcess, key: str, body: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 10**9}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"seed": 2**70}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        # Field names that are also union tags (`function`, `json_schema`) are kept; the tags are not.
        ({"tools": [{"type": "function", "function": {"name": "no spaces allowed"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        (
            {"messages": [*HI, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}]}]},
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].name"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "no spaces"}}}, "response_format.json_schema.name"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ],
)
def test_invalid_parameters_are_400_with_param(server: ServerProcess, project_key, model: str, patch: dict, param: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    response = _post(server, project_key.secret, {"model": model, "messages": HI, "max_tokens": 1, **patch})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert error["message"]


def test_missing_model_is_400_missing_required_parameter(server: ServerProcess, project_key) -> None:  # type: ignore[no-untyped-def]
    response = _post(server, project_key.secret, {"messages": HI})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
    assert response.json()["error"]["code"] == "missing_required_parameter"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b"\xff\xfe\x00", b'{"model": NaN}', b"", b"null", b'"text"'],
)
def test_unparseable_bodies_are_400(server: ServerProcess, project_key, body: bytes) -> None:  # type: ignore[no-untyped-def]
    status, payload = raw_request(
        server,
        "POST",
        "/v1/chat/completions",
        [(b"Authorization", f"Bearer {project_key.secret}".encode()), (b"Content-Type", b"application/json")],
        body,
    )
    assert status == 400, payload
    assert b'"invalid_request_error"' in payload


def test_prompt_longer_than_the_context_is_context_length_exceeded(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello " * 5000}])
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages"
    assert "maximum context length" in info.value.message


def test_huge_max_tokens_is_clamped_to_the_context(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=10**9, stop=["."])
    # The reservation takes prompt + max_tokens from the per-minute token bucket: unclamped, 10**9
    # could never fit this limit, so the answer itself shows the estimate was clamped.
    assert int(raw.headers["x-ratelimit-limit-tokens"]) < 10**9
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) >= int(raw.headers["x-ratelimit-limit-tokens"]) - 2048
    completion = raw.parse()
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.total_tokens <= 2048  # one slot's context (MODELHOST_SLOT_CONTEXT's default)


def test_body_over_the_limit_is_413(server: ServerProcess, project_key) -> None:  # type: ignore[no-untyped-def]
    body = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (9 * 1024 * 1024) + b'"}]}'
    response = httpx.post(
        f"{server.base_url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {project_key.secret}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
