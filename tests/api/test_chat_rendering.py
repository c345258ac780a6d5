"""Chat completions' renderer over the scripted engine: what the pipeline assembled becomes a message
or chunks the spec accepts, calls and all, with no model and no server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from modelhost.api import chat as chat_api
from modelhost.pipeline.assembly import collect
from modelhost.pipeline.inputs import ChatInput, Function, Tools, Turn
from modelhost.pipeline.planning import plan_chat
from pipeline.world import World
from support.fake_engine import ScriptedEngine
from support.openapi_spec import validate

CALL = '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
CHAT = ChatInput("scripted", (Turn("user", "weather?"),), tools=Tools((Function("weather"),)))


def _world(tmp_path: Path) -> World:
    return World(tmp_path, ScriptedEngine(pieces=("Checking. ", CALL[:20], CALL[20:]), context_length=1024))


def test_a_whole_answer_with_a_call_is_a_spec_chat_completion(tmp_path: Path) -> None:
    world = _world(tmp_path)

    async def main() -> dict[str, object]:
        plan = await plan_chat(CHAT, world.model, await world.admit("chatcmpl-1"), max_n=4)
        async with world.pipeline.run(plan.generation) as run:
            return chat_api._completion(plan, await collect(run, plan.tools))

    body = asyncio.run(main())
    validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]  # type: ignore[index]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Checking."
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}


def test_a_streamed_answer_with_a_call_is_spec_chunks_and_done(tmp_path: Path) -> None:
    world = _world(tmp_path)

    async def main() -> list[bytes]:
        plan = await plan_chat(CHAT, world.model, await world.admit("chatcmpl-2"), max_n=4)
        run = await world.pipeline.run(plan.generation).__aenter__()
        return [data async for data in chat_api._stream(run, run.events(), plan, include_usage=True)]

    events = asyncio.run(main())
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Checking. "
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "weather")]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == len(("Checking. " + CALL).encode())
    assert world.rows()[0][1] == "completed"
