"""`store: true` over the scripted engine: a stream keeps the same completion a whole answer would, before `[DONE]`."""

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


def test_a_stream_keeps_the_whole_answer_before_done(tmp_path: Path) -> None:
    world = _world(tmp_path)
    kept: list[tuple[dict[str, object], int]] = []
    sent: list[bytes] = []

    async def keep(completion: dict[str, object]) -> None:
        kept.append((completion, len(sent)))

    async def main() -> dict[str, object]:
        plan = await plan_chat(CHAT, world.model, await world.admit("chatcmpl-s"), max_n=4)
        run = await world.pipeline.run(plan.generation).__aenter__()
        async for data in chat_api._stream(run, run.events(), plan, include_usage=True, keep=keep):
            sent.append(data)
        whole = await plan_chat(CHAT, world.model, await world.admit("chatcmpl-w"), max_n=4)
        async with world.pipeline.run(whole.generation) as run:
            return chat_api._completion(whole, await collect(run, whole.tools))

    answer = asyncio.run(main())
    [(streamed, when)] = kept
    validate("CreateChatCompletionResponse", streamed)
    usage_chunk, done = sent[when:]  # kept before the usage chunk and [DONE]: all that was left to send
    assert json.loads(usage_chunk.removeprefix(b"data: "))["usage"] and done == b"data: [DONE]\n\n"
    assert streamed["id"] == "chatcmpl-s"
    streamed_call = streamed["choices"][0]["message"]["tool_calls"][0]  # type: ignore[index]
    assert streamed_call["id"].encode() in b"".join(sent)  # the call id the client was sent
    answer["choices"][0]["message"]["tool_calls"][0]["id"] = streamed_call["id"]  # type: ignore[index]  # ids are random
    assert streamed["choices"] == answer["choices"]
    assert streamed["usage"] == answer["usage"]
