"""How `responses.compaction` splits a context, with the scripted engine (one token a byte): the newest
turn kept, older items summarised, the oldest dropped when the summary prompt cannot hold them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from modelhost.protocol.responses import CompactRequest
from modelhost.responses import compaction
from modelhost.responses.context import Context
from pipeline.world import World
from support.fake_engine import ScriptedEngine


def _message(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"id": f"msg_{role}_{len(text)}", "type": "message", "role": role, "status": "completed", "content": [{"type": kind, "text": text}]}


CALL = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Oslo"}', "status": "completed"}
OUTPUT = {"id": "fco_1", "type": "function_call_output", "call_id": "call_1", "output": "sunny", "status": "completed"}


def _plan(world: World, items: list[dict[str, Any]]) -> compaction.Compaction:
    async def main() -> compaction.Compaction:
        body = CompactRequest(model="scripted")
        return await compaction.plan(body, Context([], items, 1), world.model, await world.admit(), max_n=1)

    return asyncio.run(main())


def test_the_newest_turn_is_kept_verbatim_and_the_older_items_are_summarised(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    older = [_message("user", "a" * 100), _message("assistant", "b" * 100)]
    split = _plan(world, [*older, _message("user", "c" * 50)])
    assert split.kept == [_message("user", "c" * 50)] and split.summarised == older and split.dropped == 0
    assert split.summary is not None
    prompt = bytes(split.summary.generation.prompt_tokens).decode()
    assert "a" * 100 in prompt and "c" * 50 not in prompt and compaction.SUMMARY_REQUEST in prompt
    assert split.summary.generation.sampling.max_tokens == 16  # a quarter of 200 characters' ~50 tokens, at least 16
    assert split.summary.generation.operation == "responses"


def test_a_call_output_is_never_kept_without_its_call(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    answer = _message("assistant", "It is sunny.")
    items = [_message("user", "Weather?"), CALL, OUTPUT, answer]
    start, tokens = compaction._kept(items, world.model, len("sunny") + len("It is sunny."))  # room for the output and the answer
    assert items[start:] == [answer] and tokens == len("It is sunny.")


def test_older_items_the_summary_prompt_cannot_hold_are_dropped_oldest_first(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    split = _plan(world, [_message("user", "x" * 900), _message("assistant", "y" * 50), _message("user", "z" * 20)])
    assert split.dropped == 1 and split.summarised == [_message("assistant", "y" * 50)] and split.kept == [_message("user", "z" * 20)]


def test_with_nothing_older_than_the_newest_turn_nothing_is_summarised(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    items = [_message("user", "Weather?"), CALL, OUTPUT]
    split = _plan(world, items)
    assert (split.kept, split.summarised, split.dropped, split.summary) == (items, [], 0, None)


def test_with_no_room_for_a_summary_every_older_item_is_dropped(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=40))  # a budget of 20 tokens: 15 left after the kept turn
    split = _plan(world, [_message("user", "old"), _message("user", "z" * 5)])
    assert (split.kept, split.summarised, split.dropped, split.summary) == ([_message("user", "z" * 5)], [], 1, None)


def test_the_create_request_it_reads_keeps_the_parsed_items_as_they_are() -> None:
    body = CompactRequest.model_validate({"model": "m", "input": [{"id": "0", "type": None}], "previous_response_id": "resp_1"})
    create = compaction.as_create(body)  # an item reference with a null type (allowed) is not validated again
    assert create.input == body.input and create.previous_response_id == "resp_1" and create.store is False and create.conversation is None
