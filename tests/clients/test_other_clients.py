"""The OpenAI quick-start in other clients, old and new, with only the base URL changed."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from clients import runner
from serverproc import EMBEDDING_MODEL, ServerProcess, wait_for_entry


@pytest.fixture(scope="module")
def client_env(server: ServerProcess, project_key, model: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "MODELHOST_BASE_URL": server.base_url,
        "MODELHOST_API_KEY": project_key.secret,
        "MODELHOST_ORG": project_key.organization,
        "MODELHOST_MODEL": model,
    }


def _check_chat(result: dict, model: str, server: ServerProcess) -> None:  # type: ignore[type-arg]
    chat = result["chat"]
    assert chat["object"] == "chat.completion"
    assert chat["model"] == model
    assert chat["role"] == "assistant"
    assert chat["content"]
    assert chat["finish_reason"] in ("stop", "length")
    assert chat["usage"]["completion_tokens"] <= 5
    assert wait_for_entry(server, chat["id"]).completion_tokens == chat["usage"]["completion_tokens"]
    stream = result["stream"]
    assert stream["object"] == "chat.completion.chunk"
    assert stream["content"]
    assert stream["finish_reason"] in ("stop", "length")


def test_python_openai_0_28(client_env: dict[str, str], model: str, server: ServerProcess) -> None:
    result = runner.run_legacy_python(client_env)
    assert result["sdk_version"] == "0.28.1"
    assert result["models"] == [model, EMBEDDING_MODEL]
    assert result["retrieved"] == model
    assert result["engines"] == [model, EMBEDDING_MODEL]
    _check_chat(result, model, server)


def _node(script: str, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    if not runner.node_available():
        pytest.skip("node/npm are not installed")
    return runner.run_node(script, env)


def test_node_openai_v3(client_env: dict[str, str], model: str, server: ServerProcess) -> None:
    result = _node("node_v3.js", client_env)
    assert result["sdk_version"].startswith("3.")
    assert result["models"] == [model, EMBEDDING_MODEL]
    assert result["engines"] == [model, EMBEDDING_MODEL]
    _check_chat(result, model, server)


def test_node_openai_current(client_env: dict[str, str], model: str, server: ServerProcess) -> None:
    result = _node("node_current.mjs", client_env)
    assert result["models"] == [model, EMBEDDING_MODEL]
    _check_chat(result, model, server)
    assert result["stream"]["usage"]["completion_tokens"] > 0


def test_php_curl(client_env: dict[str, str], model: str, server: ServerProcess) -> None:
    try:
        result = runner.run_php(client_env)
    except runner.ClientUnavailable as exc:
        pytest.skip(str(exc))
    assert result["models"]["status"] == 200
    assert [m["id"] for m in result["models"]["body"]["data"]] == [model, EMBEDDING_MODEL]
    assert result["chat"]["status"] == 200
    assert result["chat"]["body"]["choices"][0]["message"]["content"]


def test_curl_quickstart(client_env: dict[str, str], model: str) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    auth = ["-H", f"Authorization: Bearer {client_env['MODELHOST_API_KEY']}", "-H", f"OpenAI-Organization: {client_env['MODELHOST_ORG']}"]
    models = subprocess.run(["curl", "-sS", "--fail-with-body", f"{client_env['MODELHOST_BASE_URL']}/models", *auth],
                            capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(models.stdout)["data"][0]["id"] == model
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say this is a test!"}], "max_tokens": 5, "temperature": 0.7})
    chat = subprocess.run(
        ["curl", "-sS", "--fail-with-body", f"{client_env['MODELHOST_BASE_URL']}/chat/completions",
         "-H", "Content-Type: application/json", *auth, "-d", body],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert json.loads(chat.stdout)["choices"][0]["message"]["content"]


def test_node_current_generation_features(client_env: dict[str, str], model: str) -> None:
    """Structured outputs, tool calls (plain and streamed), logprobs and legacy completions from Node."""
    import jsonschema

    result = _node("node_generation_features.mjs", client_env)
    structured = result["structured"]
    if structured["finish_reason"] == "stop":
        jsonschema.validate(
            json.loads(structured["content"]),
            {"type": "object", "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}}, "required": ["name", "legs"]},
        )
    assert result["tool"]["finish_reason"] == "tool_calls"
    assert result["tool"]["calls"][0]["name"] == "get_weather"
    assert set(json.loads(result["tool"]["calls"][0]["arguments"])) == {"city", "unit"}
    assert result["streamed_tool"]["finish_reason"] == "tool_calls"
    assert result["streamed_tool"]["calls"][0]["name"] == "get_weather"
    json.loads(result["streamed_tool"]["calls"][0]["arguments"])
    assert result["logprobs"]["tokens"] == result["logprobs"]["completion_tokens"] == 3
    assert result["logprobs"]["top"] == [2, 2, 2]
    legacy = result["legacy"]
    assert legacy["object"] == "text_completion" and legacy["text"].startswith("Hello world")
    assert legacy["first_logprob"] is None and len(legacy["tokens"]) == legacy["prompt_tokens"] + 3
