"""How a background response ends when things go wrong: its final state is stored before its last
event is published, a store that fails is retried, a run past its deadline ends failed (settled and
stored), and a run this replica lost is marked failed on its next read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modelhost.auth import Principal
from modelhost.protocol.responses import CreateResponse
from modelhost.responses import background as bg
from modelhost.responses import context as ctx
from modelhost.responses import render
from modelhost.responses.background import BackgroundResponses, EventLog, run_detached
from modelhost.responses.events import ResponseEvents
from modelhost.store import tenancy
from pipeline.world import World
from store.databases import Database
from support.fake_engine import ScriptedEngine

HI = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
BODY = CreateResponse.model_validate({"model": "scripted", "input": "hi", "background": True})


async def _run(world: World, response_id: str, save: bg.Save, **options: Any) -> tuple[EventLog, BackgroundResponses]:
    """Run a background response on the world's scripted engine to its end."""
    plan = await ctx.plan(BODY, ctx.Context([], HI, 1), world.model, await world.admit(response_id), max_n=4)
    run = await world.pipeline.run(plan.generation).__aenter__()
    renderer, log = ResponseEvents(render.frame(BODY, response_id, "scripted"), with_logprobs=False), EventLog()
    background = BackgroundResponses()
    background.start(response_id, log, run_detached(run, plan.tools, renderer, log, save=save, **options))
    await asyncio.wait_for(_drain(log), timeout=10)
    await asyncio.sleep(0)  # the task's done callback
    return log, background


async def _drain(log: EventLog) -> None:
    async for _ in log.follow(-1):
        pass


def test_the_final_state_is_stored_before_its_last_event_is_published(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    published_when_saved: list[list[str]] = []
    logs: list[EventLog] = []

    async def save(response: dict[str, Any], events: list[dict[str, Any]] | None) -> None:
        if events is not None:
            published_when_saved.append([kind for kind, _ in logs[0].events])
            assert events[-1]["type"] == "response.completed"  # stored with its last event

    async def main() -> EventLog:
        log_holder = EventLog()
        logs.append(log_holder)
        plan = await ctx.plan(BODY, ctx.Context([], HI, 1), world.model, await world.admit("resp_order"), max_n=4)
        run = await world.pipeline.run(plan.generation).__aenter__()
        renderer = ResponseEvents(render.frame(BODY, "resp_order", "scripted"), with_logprobs=False)
        BackgroundResponses().start("resp_order", log_holder, run_detached(run, plan.tools, renderer, log_holder, save=save))
        await asyncio.wait_for(_drain(log_holder), timeout=10)
        return log_holder

    log = asyncio.run(main())
    assert published_when_saved and "response.completed" not in published_when_saved[0]
    assert log.events[-1][0] == "response.completed"


def test_a_final_save_that_fails_is_retried_then_the_state_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bg, "FINAL_SAVE_DELAYS", (0.0, 0.0, 0.0))
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    attempts: list[str] = []

    async def save(response: dict[str, Any], events: list[dict[str, Any]] | None) -> None:
        if events is not None:
            attempts.append(response["status"])
            if len(attempts) < 3:
                raise ConnectionError("the store is away")

    log, background = asyncio.run(_run(world, "resp_retry", save))
    assert attempts == ["completed"] * 3
    assert log.events[-1][0] == "response.completed" and len(background) == 0
    assert world.rows()[0][:2] == ("resp_retry", "completed")


def test_a_final_save_that_keeps_failing_ends_the_task_quietly_and_settled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bg, "FINAL_SAVE_DELAYS", (0.0, 0.0, 0.0))
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    attempts: list[str] = []
    unhandled: list[object] = []

    async def save(response: dict[str, Any], events: list[dict[str, Any]] | None) -> None:
        if events is not None:
            attempts.append(response["status"])
            raise ConnectionError("the store is away")

    async def main() -> tuple[EventLog, BackgroundResponses]:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: unhandled.append(context))
        return await _run(world, "resp_lost", save)

    log, background = asyncio.run(main())
    # Four tries at the completed state, then four at failed; nothing published that was not stored.
    assert attempts == ["completed"] * 4 + ["failed"] * 4
    assert "response.completed" not in [t for t, _ in log.events] and log.done
    assert len(background) == 0 and not background.runs("resp_lost") and unhandled == []
    assert world.rows()[0][:2] == ("resp_lost", "completed")  # billed: the ledger has it


def test_a_run_past_its_deadline_ends_failed_settled_and_stored(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024, gate=asyncio.Event()))  # never opened
    saved: list[tuple[str, list[str] | None]] = []

    async def save(response: dict[str, Any], events: list[dict[str, Any]] | None) -> None:
        saved.append((response["status"], None if events is None else [e["type"] for e in events]))
        if events is not None:
            assert response["error"]["code"] == "server_error" and "0.2 seconds" in response["error"]["message"]

    log, _ = asyncio.run(_run(world, "resp_slow", save, deadline_seconds=0.2))
    assert [status for status, _ in saved] == ["in_progress", "failed"]
    assert saved[-1][1] is not None and saved[-1][1][-2:] == ["error", "response.failed"]
    assert [t for t, _ in log.events][-2:] == ["error", "response.failed"] and log.events[-2][1]["code"] == "timeout"
    assert world.rows()[0][0] == "resp_slow" and world.rows()[0][1] != "completed"  # settled


def test_a_response_running_in_the_store_on_this_replica_without_a_task_is_failed(database: Database) -> None:
    with database.sessions() as session:
        org = tenancy.create_organization(session, "Mine")
        session.commit()
        project = tenancy.default_project(session, org.id)
        assert project is not None
        me = Principal(org.id, project.id, "user-1", "key_1", "project")
    now = tenancy.utcnow()
    context = ctx.load(database.sessions, me, BODY, now)
    for response_id in ("resp_here", "resp_gone"):
        queued = {"id": response_id, "status": "queued", "model": "m", "background": True, "output": []}
        ctx.save(database.sessions, me, queued, context, now, 30, replica_id="replica-me")
    running = BackgroundResponses()
    running.reserve("resp_here")  # about to start here: not lost
    for _ in range(2):
        kept = ctx.get(database.sessions, me, "resp_here", now, this_replica="replica-me", runs_here=running.runs)
        assert kept["status"] == "queued"
    failed = ctx.get(database.sessions, me, "resp_gone", now, this_replica="replica-me", runs_here=running.runs)
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert ctx.get(database.sessions, me, "resp_gone", now)["status"] == "failed"  # stored so
    elsewhere = ctx.get(database.sessions, me, "resp_here", now, this_replica="replica-other", runs_here=lambda _: False)
    assert elsewhere["status"] == "queued"  # another replica's run is judged by its heartbeat, not by this one's tasks
