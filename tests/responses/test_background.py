"""Background responses over the scripted engine: the detached run logs spec events that followers
read live from any point, stores each state, and settles however it ends."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from modelhost.protocol.responses import CreateResponse
from modelhost.responses import context as ctx
from modelhost.responses import render
from modelhost.responses.background import BackgroundResponses, EventLog, queued_events, run_detached
from modelhost.responses.events import ResponseEvents
from pipeline.world import World
from responses.spec_events import validate_event
from support.fake_engine import ScriptedEngine


def test_followers_read_the_log_live_from_any_point_and_states_are_stored(tmp_path: Path) -> None:
    gate = asyncio.Event()
    world = World(tmp_path, ScriptedEngine(context_length=1024, gate=gate))
    body = CreateResponse.model_validate({"model": "scripted", "input": "hi", "background": True})
    saved: list[tuple[str, int | None]] = []

    async def save(response: dict[str, Any], events: list[dict[str, Any]] | None) -> None:
        saved.append((response["status"], None if events is None else len(events)))

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        context = ctx.Context([], [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}], 1)
        plan = await ctx.plan(body, context, world.model, await world.admit("resp_bg"), max_n=4)
        run = await world.pipeline.run(plan.generation).__aenter__()
        frame = render.frame(body, "resp_bg", "scripted")
        renderer, log = ResponseEvents(frame, with_logprobs=False), EventLog()
        log.add(queued_events(renderer, {**frame, "status": "queued"}))
        background = BackgroundResponses()
        background.start("resp_bg", log, run_detached(run, plan.tools, renderer, log, save=save))
        whole = asyncio.create_task(_read(log, -1))
        late = asyncio.create_task(_read(log, 4))
        await asyncio.sleep(0)
        gate.set()
        return await whole, await late

    whole, late = asyncio.run(main())
    for event in whole:
        validate_event(event)
    assert [e["type"] for e in whole[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert whole[-1]["type"] == "response.completed" and late == whole[5:]
    assert saved == [("in_progress", None), ("completed", len(whole))]
    assert world.rows() == [("resp_bg", "completed", world.rows()[0][2], len("Hello, world"))]


async def _read(log: EventLog, after: int) -> list[dict[str, Any]]:
    return [payload async for _, payload in log.follow(after)]


def test_a_cancel_made_on_another_replica_stops_the_run(tmp_path: Path) -> None:
    gate = asyncio.Event()  # never opened: the generation waits until it is cancelled
    world = World(tmp_path, ScriptedEngine(context_length=1024, gate=gate))
    body = CreateResponse.model_validate({"model": "scripted", "input": "hi", "background": True})
    saved: list[str] = []

    async def save(response: dict[str, Any], events: list[dict[str, Any]] | None) -> None:
        saved.append(response["status"])

    async def cancelled_elsewhere() -> bool:
        return False

    async def main() -> None:
        context = ctx.Context([], [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}], 1)
        plan = await ctx.plan(body, context, world.model, await world.admit("resp_x"), max_n=4)
        run = await world.pipeline.run(plan.generation).__aenter__()
        renderer, log = ResponseEvents(render.frame(body, "resp_x", "scripted"), with_logprobs=False), EventLog()
        background = BackgroundResponses()
        work = run_detached(run, plan.tools, renderer, log, save=save, still_running=cancelled_elsewhere, poll_seconds=0.01)
        background.start("resp_x", log, work)
        await asyncio.wait_for(_read(log, -1), timeout=5)  # the log closes when the task ends
        assert len(background) == 0

    asyncio.run(main())
    assert saved == ["in_progress"]  # nothing stored after the cancel
    assert world.rows()[0][:2] == ("resp_x", "cancelled")
