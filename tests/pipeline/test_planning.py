"""Planning from neutral inputs, with the scripted engine: what the model is told, how much it may
write, which errors name which field, and what a forwarding engine's upstream is sent."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from modelhost.engine.registry import CHAT
from modelhost.errors import ContextLengthExceeded, InvalidRequest
from modelhost.pipeline.inputs import CallRecord, ChatInput, Function, OutputFormat, Params, Sampling, TextInput, Tools, Turn
from modelhost.pipeline.planning import ChatPlan, plan_chat, plan_text
from support.fake_engine import ScriptedEngine

from .world import World

WEATHER = Function("weather", "The weather in a city.", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def _chat(world: World, chat: ChatInput) -> ChatPlan:
    async def main() -> ChatPlan:
        return await plan_chat(chat, world.model, await world.admit(), max_n=4)

    return asyncio.run(main())


def test_the_conversation_is_rendered_and_the_completion_gets_the_context_left(tmp_path: Path) -> None:
    world = World(tmp_path)
    plan = _chat(world, ChatInput("scripted", (Turn("developer", "be brief"), Turn("user", "hi"))))
    rendered = "system: be brief\nuser: hi\nassistant: "  # developer turns are system turns for older templates
    assert list(plan.generation.prompt_tokens) == list(rendered.encode())
    assert plan.generation.sampling.max_tokens == 64 - len(rendered)
    assert plan.generation.sampling.temperature == 1.0 and plan.tools is None


def test_max_tokens_is_clamped_and_a_prompt_that_fills_the_context_names_the_input_field(tmp_path: Path) -> None:
    world = World(tmp_path)
    asked = _chat(world, ChatInput("scripted", (Turn("user", "hi"),), max_tokens=1000))
    assert asked.generation.sampling.max_tokens == 64 - len("user: hi\nassistant: ")
    long = ChatInput("scripted", (Turn("user", "x" * 80),), params=Params(messages="input"))
    with pytest.raises(ContextLengthExceeded) as refused:
        _chat(world, long)
    assert refused.value.param == "input" and "your input resulted in" in refused.value.message


def test_n_is_bounded_by_the_engine(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(max_n=2))
    with pytest.raises(InvalidRequest) as refused:
        _chat(world, ChatInput("scripted", (Turn("user", "hi"),), n=3))
    assert refused.value.param == "n" and "at most 2" in refused.value.message


def test_tools_for_a_template_without_them_become_a_system_prompt_and_a_lazy_grammar(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    earlier = Turn("assistant", "", calls=(CallRecord("call_1", "weather", '{"city": "Oslo"}'),))
    turns = (Turn("user", "weather?"), earlier, Turn("tool", "sunny", tool_call_id="call_1"))
    plan = _chat(world, ChatInput("scripted", turns, tools=Tools((WEATHER,))))
    assert plan.tools is not None and plan.tools.mode == "auto"
    messages = world.engine.rendered[-1]
    assert messages[0]["role"] == "system" and '"name": "weather"' in str(messages[0]["content"])
    assert messages[2]["content"] == '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert plan.generation.sampling.grammar_trigger == "<tool_call>" and plan.generation.sampling.grammar


def test_tool_errors_name_the_fields_the_request_used(tmp_path: Path) -> None:
    world = World(tmp_path)
    legacy = Params(tools="functions", tool_choice="function_call")
    missing = ChatInput("scripted", (Turn("user", "hi"),), tools=Tools((WEATHER,), "nope", named=True, legacy=True), params=legacy)
    with pytest.raises(InvalidRequest) as refused:
        _chat(world, missing)
    assert refused.value.param == "function_call" and "no function named 'nope'" in refused.value.message
    twice = ChatInput("scripted", (Turn("user", "hi"),), tools=Tools((WEATHER, WEATHER)))
    with pytest.raises(InvalidRequest, match="unique"):
        _chat(world, twice)


def test_a_model_without_tools_or_schemas_refuses_them(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.model = replace(world.model, features=frozenset({CHAT}))
    with pytest.raises(InvalidRequest) as refused:
        _chat(world, ChatInput("scripted", (Turn("user", "hi"),), tools=Tools((WEATHER,))))
    assert refused.value.param == "tools" and refused.value.code == "unsupported_parameter"
    with pytest.raises(InvalidRequest) as refused:
        _chat(world, ChatInput("scripted", (Turn("user", "json"),), output=OutputFormat("json_object")))
    assert refused.value.param == "response_format"


def test_json_object_output_needs_the_word_json(tmp_path: Path) -> None:
    world = World(tmp_path)
    with pytest.raises(InvalidRequest) as refused:
        _chat(world, ChatInput("scripted", (Turn("user", "hi"),), output=OutputFormat("json_object"), params=Params(messages="input")))
    assert refused.value.param == "input"
    plan = _chat(world, ChatInput("scripted", (Turn("user", "answer in JSON"),), output=OutputFormat("json_object")))
    assert plan.generation.sampling.grammar


def test_a_forwarding_engine_gets_a_body_rebuilt_from_the_input(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(forwards_requests=True, context_length=4096))
    chat = ChatInput(
        "scripted",
        (Turn("user", "hi"), Turn("assistant", "", calls=(CallRecord("call_1", "weather", "{}"),))),
        sampling=Sampling(temperature=0.5, stop=("\n",), logit_bias={"7": 1.0}),
        max_tokens=20,
        logprobs=2,
        tools=Tools((WEATHER,), "required", parallel=False),
        output=OutputFormat("json_schema", "answer", {"type": "object"}, strict=True),
    )
    plan = _chat(world, chat)
    upstream = plan.generation.upstream
    assert upstream is not None and plan.generation.prompt_tokens == ()
    assert upstream.body == {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ]},
        ],
        "temperature": 0.5,
        "stop": ["\n"],
        "logit_bias": {"7": 1.0},
        "logprobs": True,
        "top_logprobs": 2,
        "tools": [{"type": "function", "function": {"name": "weather", "description": "The weather in a city.", "parameters": WEATHER.parameters}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True}},
        "max_tokens": 20,
    }
    assert plan.generation.sampling.max_tokens == 20


def test_raw_prompts_get_one_plan_each_under_one_admission(tmp_path: Path) -> None:
    world = World(tmp_path)

    async def main(text: TextInput) -> list[object]:
        return await plan_text(text, world.model, await world.admit("cmpl-1"), max_n=4)  # type: ignore[return-value]

    plans = asyncio.run(main(TextInput("scripted", ("ab", (1, 2, 3)), max_tokens=5, n=1, best_of=2)))
    assert [(p.request_id, list(p.prompt_tokens), p.n, p.sampling.logprobs) for p in plans] == [  # type: ignore[attr-defined]
        ("cmpl-1-0", [97, 98], 2, 0),  # best_of ranks by logprobs, so they are asked for
        ("cmpl-1-1", [1, 2, 3], 2, 0),
    ]
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(main(TextInput("scripted", ("ok", (1, 999)))))
    assert refused.value.param == "prompt[1]"
