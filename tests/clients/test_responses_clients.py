"""The Responses API from the other real clients: the Node SDK (streamed, with its event helpers),
the Vercel AI SDK (streamText and a tool call over `openai.responses(model)`) and the OpenAI Agents
SDK (an agent with a function tool, through its OpenAIResponsesModel).

Each client is a program in this directory run by runner.py against the session's server; each
makes a few short generations. A client that cannot be installed skips only when its package
registry is unreachable; any other failure fails. Assertions are on the protocol (shapes, ids,
events, the tool call's arguments against its schema), not on what the tiny model says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import openai
import pytest

from clients import runner
from serverproc import ServerProcess, wait_for_entry

CITIES = ("Oslo", "Bergen")  # the enum of every client's get_weather tool


@pytest.fixture(scope="module")
def client_env(server: ServerProcess, project_key, model: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "MODELHOST_BASE_URL": server.base_url,
        "MODELHOST_API_KEY": project_key.secret,
        "MODELHOST_ORG": project_key.organization,
        "MODELHOST_MODEL": model,
    }


def _install(tool: str, install: Callable[[], object]) -> None:
    """Install a client (cached); skip only when ``tool``'s registry cannot be reached."""
    try:
        install()
    except runner.ClientInstallError as exc:
        if runner.registry_reachable(tool):
            raise
        pytest.skip(f"the {tool} registry is unreachable, so the client cannot be installed: {exc}")


def _node(script: str, env: dict[str, str]) -> dict[str, Any]:
    _install("npm", lambda: runner.ensure_node_sdk(runner.NODE_SCRIPTS[script]))
    return runner.run_node(script, env, timeout=300)


@pytest.fixture(scope="module")
def agents_run(client_env: dict[str, str]) -> dict[str, Any]:
    _install("pip", runner.ensure_agents_python)
    return runner.run_agents_python(client_env)


def _message_text(item: dict[str, Any]) -> str:
    return "".join(part.get("text", "") for part in item.get("content") or [])


def test_node_sdk_creates_retrieves_and_streams_responses(client_env: dict[str, str], model: str, server: ServerProcess) -> None:
    result = _node("node_responses.mjs", client_env)

    created, retrieved = result["create"]["created"], result["create"]["retrieved"]
    assert created["id"].startswith("resp_") and created["object"] == "response" and created["model"] == model
    assert created["status"] in ("completed", "incomplete") and created["output_text"]
    assert created["output"][0]["type"] == "message" and created["output"][0]["id"].startswith("msg_")
    assert 0 < created["usage"]["output_tokens"] <= 16
    assert retrieved == created
    assert wait_for_entry(server, created["id"]).completion_tokens == created["usage"]["output_tokens"]

    raw = result["raw_stream"]
    assert raw["types"][:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert raw["types"][-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert raw["types"][-1] == f"response.{raw['final']['status']}" and raw["final"]["status"] in ("completed", "incomplete")
    assert raw["sequence"] == list(range(len(raw["types"])))
    assert raw["text"] and "response.output_text.delta" in raw["types"]

    helper = result["helper_stream"]
    handled, final = helper["handled"], helper["final"]
    assert handled["created"] == 1 and handled["deltas"] > 0
    assert handled["completed"] + handled["incomplete"] == 1
    assert final["status"] == ("completed" if handled["completed"] else "incomplete")
    assert helper["snapshot_text"] == handled["text_done"] == final["output_text"]
    assert 0 < final["usage"]["output_tokens"] <= 16

    call = result["function_call"]
    added = [item for item in call["added_items"] if item["type"] == "function_call"]
    assert len(added) == 1
    assert call["argument_deltas"] == call["arguments_done"]
    assert json.loads(call["arguments_done"])["city"] in CITIES
    calls = [item for item in call["final"]["output"] if item["type"] == "function_call"]
    assert len(calls) == 1 and calls[0]["name"] == "get_weather" and calls[0]["arguments"] == call["arguments_done"]
    assert calls[0]["id"] == added[0]["id"] and calls[0]["id"].startswith("fc_")
    assert calls[0]["call_id"] and calls[0]["call_id"] != calls[0]["id"]


def test_vercel_ai_sdk_streams_text_and_calls_a_tool_over_responses(client_env: dict[str, str], server: ServerProcess) -> None:
    result = _node("node_ai_sdk.mjs", client_env)

    stream = result["stream"]
    assert stream["errors"] == []
    assert stream["chunks"] > 0 and stream["text"] and stream["text"] == stream["result_text"]
    assert stream["finish_reason"] in ("stop", "length")
    usage = stream["usage"]
    assert usage["inputTokens"] > 0 and 0 < usage["outputTokens"] <= 16
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert stream["response_id"].startswith("resp_")
    assert wait_for_entry(server, stream["response_id"]).completion_tokens == usage["outputTokens"]

    tool = result["tool"]
    assert tool["finish_reason"] == "tool-calls" and tool["steps"] == 1
    assert [(c["name"], set(c["input"])) for c in tool["tool_calls"]] == [("get_weather", {"city"})]
    city = tool["tool_calls"][0]["input"]["city"]
    assert city in CITIES and tool["executed"] == [city]
    assert tool["tool_results"] == [{"name": "get_weather", "output": {"city": city, "forecast": "sunny"}}]


def test_agents_sdk_runs_an_agent_with_a_function_tool(agents_run: dict[str, Any], client: openai.OpenAI) -> None:
    assert agents_run["sdk_version"] == runner.PY_OPENAI_AGENTS
    called = agents_run["call_run"]
    assert len(called["raw_responses"]) == 1 and called["raw_responses"][0]["response_id"].startswith("resp_")
    assert "function_call" in called["raw_responses"][0]["output_types"]

    by_type = {item["type"]: item["raw"] for item in called["items"]}
    call, output = by_type["tool_call_item"], by_type["tool_call_output_item"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["status"] == "completed"
    assert call["id"].startswith("fc_") and call["call_id"] and call["call_id"] != call["id"]
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, agents_run["tool_schema"])
    assert agents_run["tool_invocations"] == [arguments["city"]]
    assert output == {"type": "function_call_output", "call_id": call["call_id"], "output": f"It is sunny in {arguments['city']}."}
    assert called["final_output"] == output["output"]  # stop_on_first_tool: the tool's result

    answered = agents_run["answer_run"]
    assert [r["output_types"] for r in answered["raw_responses"]] == [["message"]]
    assert isinstance(answered["final_output"], str) and answered["final_output"]
    # The second turn sent the call and its output back as input items; the server stored them.
    stored = client.responses.input_items.list(answered["last_response_id"], order="asc")
    types = [item.type for item in stored.data]
    assert types[0] == "message" and types[-2:] == ["function_call", "function_call_output"]
    assert (stored.data[-1].call_id, stored.data[-2].call_id) == (call["call_id"], call["call_id"])  # type: ignore[union-attr]


def test_agents_sdk_forced_call_answer_has_no_tool_markup_as_text(agents_run: dict[str, Any]) -> None:
    messages = [item["raw"] for item in agents_run["call_run"]["items"] if item["type"] == "message_output_item"]
    assert not any("<tool" in _message_text(m) for m in messages), messages
