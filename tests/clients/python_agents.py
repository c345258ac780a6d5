"""Run an OpenAI Agents SDK agent with one function tool against modelhost's Responses API.

Run by tests/clients/runner.py under the cached ``openai-agents`` install (pinned there as
PY_OPENAI_AGENTS), which comes first on PYTHONPATH. Reads MODELHOST_BASE_URL,
MODELHOST_API_KEY, MODELHOST_ORG, MODELHOST_MODEL.

The agent's model is ``OpenAIResponsesModel`` over an ``AsyncOpenAI`` pointed at modelhost,
tracing off (it would post to api.openai.com). Two runs of one model call each, so the tiny
model cannot wander into more turns (with tool_choice back to auto after the call, it calls the
tool again, measured): the first is forced to call the tool (``tool_choice="required"``) and
stops on the tool's result (``stop_on_first_tool``); the second continues that conversation the
documented way (``result.to_input_list()``: the user message, the function call and its output
as input items) with ``tool_choice="none"``, and its answer is the final output. ``max_turns=1``
makes any extra turn an error (MaxTurnsExceeded).

Prints one JSON object on stdout: the tool's invocations, the items of the run, and each raw
model response. Any failure: traceback on stderr, exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, Literal

def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"missing env {name}")
    return value


async def main() -> dict[str, Any]:
    from importlib.metadata import version

    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(
        base_url=_env("MODELHOST_BASE_URL"), api_key=_env("MODELHOST_API_KEY"),
        organization=_env("MODELHOST_ORG"), max_retries=0,
    )
    calls: list[str] = []

    @function_tool
    def get_weather(city: Literal["Oslo", "Bergen"]) -> str:
        """The weather in a city.

        Args:
            city: The city.
        """
        calls.append(city)
        return f"It is sunny in {city}."

    agent = Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        model=OpenAIResponsesModel(model=_env("MODELHOST_MODEL"), openai_client=client),
        # An enum keeps the forced call short; 32 tokens hold the whole call on the tiny model.
        model_settings=ModelSettings(tool_choice="required", max_tokens=32, temperature=0.0),
        tools=[get_weather],
        tool_use_behavior="stop_on_first_tool",
    )
    called = await Runner.run(agent, "What is the weather in Oslo?", max_turns=1)
    answering = agent.clone(
        instructions="Say the weather the tool gave, in one short sentence.",
        # Room for that sentence: the SDK raises on `response.incomplete`, which is the model's length, not the protocol.
        model_settings=ModelSettings(tool_choice="none", max_tokens=48, temperature=0.0),
        tool_use_behavior="run_llm_again",
    )
    answered = await Runner.run(answering, called.to_input_list(), max_turns=1)
    return {
        "sdk": "openai-agents",
        "sdk_version": version("openai-agents"),
        "openai_version": version("openai"),
        "tool_schema": get_weather.params_json_schema,
        "tool_invocations": calls,
        "call_run": _run(called),
        "answer_run": _run(answered),
        "answer_input": [_wire(i) for i in called.to_input_list()],
    }


def _run(result: Any) -> dict[str, Any]:
    """A RunResult as the test needs it: its new items, raw model responses and final output."""
    return {
        "items": [{"type": i.type, "raw": _wire(i.raw_item)} for i in result.new_items],
        "raw_responses": [
            {"response_id": r.response_id, "output_types": [o.type for o in r.output],
             "usage": {"input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens}}
            for r in result.raw_responses
        ],
        "final_output": result.final_output,
        "last_response_id": result.last_response_id,
    }


def _wire(item: Any) -> dict[str, Any]:
    """An item (a pydantic model or a TypedDict) as JSON fields."""
    return item.model_dump(mode="json", exclude_unset=True) if hasattr(item, "model_dump") else dict(item)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
