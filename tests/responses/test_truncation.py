"""`truncation: "auto"` with the scripted engine (one token a byte): each item is tokenized once, the
oldest dropped by their summed counts, and the chat planned once, not once per dropped eighth."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modelhost.errors import ContextLengthExceeded
from modelhost.pipeline.planning import ChatPlan
from modelhost.protocol.responses import CompactRequest, CreateResponse
from modelhost.responses import compaction
from modelhost.responses import context as ctx
from pipeline.world import World
from support.fake_engine import ScriptedEngine


def _message(i: int, text: str) -> dict[str, Any]:
    role = "assistant" if i % 2 else "user"
    kind = "output_text" if i % 2 else "input_text"
    return {"id": f"msg_{i}", "type": "message", "role": role, "status": "completed", "content": [{"type": kind, "text": text}]}


def _counting(module: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the plans `module` makes (`plan_chat` calls)."""
    calls: list[int] = []
    real = module.plan_chat

    async def counted(*args: Any, **kwargs: Any) -> ChatPlan:
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(module, "plan_chat", counted)
    return calls


def _plan(world: World, body: CreateResponse, items: list[dict[str, Any]]) -> ChatPlan:
    async def main() -> ChatPlan:
        return await ctx.plan(body, ctx.Context([], items, 1), world.model, await world.admit(), max_n=1)

    return asyncio.run(main())


def test_a_long_context_is_truncated_with_one_plan_keeping_the_newest_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    plans = _counting(ctx, monkeypatch)
    items = [_message(i, f"{i:04d}" + "x" * 46) for i in range(200)]  # 10,000 tokens of text for a 1,024-token window
    body = CreateResponse.model_validate({"model": "scripted", "input": "x", "truncation": "auto", "max_output_tokens": 16})
    chat = _plan(world, body, items)
    assert len(plans) == 1
    prompt = bytes(chat.generation.prompt_tokens).decode()
    assert "0199" in prompt and "0000" not in prompt and len(chat.generation.prompt_tokens) < 1024


def test_instructions_too_long_alone_are_the_400_naming_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=256))
    plans = _counting(ctx, monkeypatch)
    body = CreateResponse.model_validate({"model": "scripted", "input": "x", "truncation": "auto", "instructions": "i" * 300})
    with pytest.raises(ContextLengthExceeded) as refused:
        _plan(world, body, [_message(0, "hello")])
    assert refused.value.param == "instructions" and plans == []


def test_a_compaction_drops_what_the_summary_cannot_hold_with_one_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    plans = _counting(compaction, monkeypatch)
    items = [_message(i, f"{i:04d}" + "x" * 46) for i in range(199)] + [_message(200, "newest")]

    async def main() -> compaction.Compaction:
        return await compaction.plan(CompactRequest(model="scripted"), ctx.Context([], items, 1), world.model, await world.admit(), max_n=1)

    split = asyncio.run(main())
    assert len(plans) == 1 and split.summary is not None and split.dropped > 0
    assert split.summarised[-1] == items[-2] and split.kept == [items[-1]]
