"""The Response object and its stream over the scripted engine: spec-valid, in the spec's order, no model, no server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from modelhost.api import responses as responses_api
from modelhost.errors import ContextLengthExceeded
from modelhost.pipeline.assembly import collect
from modelhost.protocol.responses import CreateResponse
from modelhost.responses import context as ctx
from modelhost.responses import render
from modelhost.responses import request as req
from pipeline.world import World
from support.fake_engine import ScriptedEngine
from responses.spec_events import validate_event
from support.openapi_spec import validate

CALL = '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
TOOLS = [{"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]


class _NoSaving:
    async def __call__(self, response: dict[str, Any]) -> None:
        self.saved = response


def _body(**fields: Any) -> CreateResponse:
    return CreateResponse.model_validate({"model": "scripted", "input": "weather?", **fields})


async def _planned(world: World, body: CreateResponse, request_id: str) -> Any:
    context = ctx.Context([], [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]}], 1)
    return await ctx.plan(body, context, world.model, await world.admit(request_id), max_n=4)


def _stream(world: World, body: CreateResponse) -> list[tuple[str, dict[str, Any]]]:
    async def main() -> list[bytes]:
        plan = await _planned(world, body, "resp_s")
        run = await world.pipeline.run(plan.generation).__aenter__()
        frame = render.frame(body, plan.generation.request_id, "scripted", created_at=1)
        return [chunk async for chunk in responses_api._stream(run, run.events(), plan, frame, body, _NoSaving())]  # type: ignore[arg-type]

    events = []
    for chunk in asyncio.run(main()):
        head, data = chunk.decode().split("\n", 1)
        payload = json.loads(data.removeprefix("data: "))
        assert head == f"event: {payload['type']}"
        validate_event(payload)
        events.append((payload["type"], payload))
    assert [p["sequence_number"] for _, p in events] == list(range(len(events)))
    return events


def test_a_streamed_text_answer_is_the_spec_sequence(tmp_path: Path) -> None:
    events = _stream(World(tmp_path, ScriptedEngine(context_length=1024)), _body())
    assert [t for t, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1][1]["response"]
    validate("Response", final)
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Hello, world"
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}


def test_a_streamed_call_has_its_own_item_id_and_argument_events(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(pieces=("Checking. ", CALL[:20], CALL[20:]), context_length=1024))
    events = _stream(world, _body(tools=TOOLS))
    kinds = [t for t, _ in events]
    assert kinds[kinds.index("response.output_item.done") + 1 :] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    call = events[-1][1]["response"]["output"][1]
    assert call["type"] == "function_call" and call["id"].startswith("fc_") and call["call_id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"city": "Oslo"} and call["name"] == "weather"


def test_an_answer_cut_short_is_incomplete(tmp_path: Path) -> None:
    events = _stream(World(tmp_path, ScriptedEngine(reason="length", context_length=1024)), _body(max_output_tokens=12))
    assert events[-1][0] == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


def test_a_whole_answer_with_a_call_is_a_spec_response(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(pieces=(CALL,), context_length=1024))
    body = _body(tools=TOOLS, tool_choice="required", metadata={"k": "v"})

    async def main() -> dict[str, Any]:
        plan = await _planned(world, body, "resp_w")
        async with world.pipeline.run(plan.generation) as run:
            result = await collect(run, plan.tools)
        choice = result.choices[0]
        frame = render.frame(body, plan.generation.request_id, "scripted")
        usage = render.usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens)
        return render.finish(frame, render.output_items(choice, with_logprobs=req.wants_logprobs(body)), choice.finish_reason, usage)

    response = asyncio.run(main())
    validate("Response", response)
    assert [i["type"] for i in response["output"]] == ["function_call"]
    assert response["tool_choice"] == "required" and response["metadata"] == {"k": "v"}
    assert world.rows()[0][:2] == ("resp_w", "completed")


def test_a_failure_mid_stream_is_an_error_event_then_response_failed(tmp_path: Path) -> None:
    events = _stream(World(tmp_path, ScriptedEngine(fail=True, context_length=1024)), _body())
    assert [t for t, _ in events][-2:] == ["error", "response.failed"]
    failed = events[-1][1]["response"]
    validate("Response", failed)
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"


def _long_context() -> ctx.Context:
    old = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"old turn {i} " * 4}]} for i in range(8)]
    return ctx.Context(old, [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "now?"}]}], 2)


def test_truncation_auto_drops_the_oldest_items_and_disabled_is_the_context_400(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=160))

    async def plan(truncation: str) -> Any:
        body = _body(truncation=truncation, instructions="Be brief.")
        return await ctx.plan(body, _long_context(), world.model, await world.admit(f"resp_{truncation}"), max_n=4)

    plan_ = asyncio.run(plan("auto"))
    rendered = world.engine.rendered[-1]
    assert rendered[0] == {"role": "system", "content": "Be brief."} and rendered[-1]["content"] == "now?"
    assert 1 < len(rendered) < 10 and len(plan_.generation.prompt_tokens) < 160
    with pytest.raises(ContextLengthExceeded) as refused:
        asyncio.run(plan("disabled"))
    assert refused.value.param == "input"


def test_a_context_far_too_long_is_cut_or_refused_before_it_is_tokenized(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=64))
    huge = ctx.Context(
        [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x" * 10_000}]}],
        [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "now?"}]}],
        2,
    )

    async def plan(truncation: str) -> Any:
        return await ctx.plan(_body(truncation=truncation), huge, world.model, await world.admit(f"resp_h{truncation}"), max_n=4)

    with pytest.raises(ContextLengthExceeded):
        asyncio.run(plan("disabled"))
    assert world.engine.rendered == []  # refused by its length alone
    asyncio.run(plan("auto"))
    assert len(world.engine.rendered) == 1 and world.engine.rendered[0][-1]["content"] == "now?"
