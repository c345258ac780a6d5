"""Engine events → content, calls and finish reasons, for a local model's text and an upstream's deltas."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modelhost.engine.base import ChoiceFinished, TextDelta, ToolCallDelta
from modelhost.pipeline.assembly import Assembler, CallPiece, ChoiceEnd, ChoiceResult, ContentPiece, collect
from modelhost.pipeline.inputs import ChatInput, Function, Tools, Turn
from modelhost.pipeline.planning import plan_chat
from modelhost.structured.tools import ToolPlan
from support.fake_engine import ScriptedEngine

from .world import World

PLAN = ToolPlan("auto", (Function("weather"),), parallel=True, legacy=False)
CALL = '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'


def test_text_that_holds_a_call_splits_into_content_and_one_whole_call() -> None:
    assembler = Assembler(1, PLAN)
    pieces = []
    for text in ("Sure. ", CALL[:5], CALL[5:40], CALL[40:]):  # the tag arrives in pieces
        pieces += assembler.feed(TextDelta(0, text))
    pieces += assembler.feed(ChoiceFinished(0, "stop", 9))
    assert pieces[0] == ContentPiece(0, "Sure. ")
    call = pieces[1]
    assert isinstance(call, CallPiece) and (call.call_index, call.name, call.arguments) == (0, "weather", '{"city": "Oslo"}')
    assert call.id is not None and call.id.startswith("call_")
    assert pieces[2:] == [ChoiceEnd(0, "tool_calls")]


def test_without_tools_text_is_content_as_it_comes() -> None:
    assembler = Assembler(2, None)
    assert assembler.feed(TextDelta(1, CALL)) == [ContentPiece(1, CALL)]
    assert assembler.feed(ChoiceFinished(1, "length", 3)) == [ChoiceEnd(1, "length")]


def test_an_upstreams_call_deltas_add_up_to_whole_calls() -> None:
    assembler = Assembler(1, None)
    choice = ChoiceResult()
    for event in (
        ToolCallDelta(0, 0, id="call_a", name="weather", arguments='{"ci'),
        ToolCallDelta(0, 0, arguments='ty": "Oslo"}'),
        ToolCallDelta(0, 1, id="call_b", name="weather", arguments="{}"),
        ChoiceFinished(0, "tool_calls", 5),
    ):
        for piece in assembler.feed(event):
            choice.add(piece)
    assert [(c.id, c.arguments) for c in choice.tool_calls] == [("call_a", '{"city": "Oslo"}'), ("call_b", "{}")]
    assert choice.content is None and choice.finish_reason == "tool_calls" and choice.function_call is None


def test_collect_runs_a_generation_to_its_answer(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(pieces=("Let me check. ", CALL), context_length=1024))

    async def main() -> None:
        chat = ChatInput("scripted", (Turn("user", "weather?"),), tools=Tools((Function("weather"),), legacy=True))
        plan = await plan_chat(chat, world.model, await world.admit(), max_n=4)
        async with world.pipeline.run(plan.generation) as run:
            result = await collect(run, plan.tools)
        choice = result.choices[0]
        assert choice.text == "Let me check. " + CALL
        assert choice.content == "Let me check." and choice.tool_calls == []
        assert choice.function_call is not None and choice.function_call.name == "weather"
        assert choice.finish_reason == "function_call"
        assert result.completion_tokens == len(choice.text.encode())

    asyncio.run(main())


def test_after_a_call_a_separator_and_a_cut_tag_are_not_an_answer() -> None:
    """A forced call, then the newline before a second call and its first bytes, cut by max tokens
    (what the Agents SDK got: an extra message "<tool" beside the call)."""
    for pieces in ((CALL, "\n", "<tool"), (CALL + "\n<to", "ol"), (CALL, "\n")):
        assembler = Assembler(1, PLAN)
        out = [p for text in pieces for p in assembler.feed(TextDelta(0, text))]
        out += assembler.feed(ChoiceFinished(0, "length", 32))
        assert [type(p).__name__ for p in out] == ["CallPiece", "ChoiceEnd"], (pieces, out)


def test_text_between_parallel_calls_that_is_only_a_newline_is_not_content() -> None:
    assembler = Assembler(1, PLAN)
    out = [p for text in (CALL, "\n", CALL) for p in assembler.feed(TextDelta(0, text))]
    assert [type(p).__name__ for p in out] == ["CallPiece", "CallPiece"]
    assert [p.call_index for p in out if isinstance(p, CallPiece)] == [0, 1]
