"""A batch line through the pipeline (`Principal.batch_id` set, as the batch runner runs one): its
engine request is batch priority, its ledger row (pending and final) says batch, and it takes no
request or token bucket while the same project's interactive requests meet theirs."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import select

from modelhost.engine.base import Priority
from modelhost.limits import RateLimitExceeded
from modelhost.pipeline.inputs import ChatInput, Turn
from modelhost.pipeline.planning import plan_chat
from modelhost.store import limits as stored
from modelhost.store.schema import UsageRecord

from .world import World


def test_a_batch_line_runs_at_batch_priority_and_is_recorded_as_batch(tmp_path: Path) -> None:
    world = World(tmp_path)
    with world.sessions() as session:
        stored.put_rate_limit(
            session, organization_id=world.who.organization_id, scope="organization", scope_id=world.who.organization_id,
            model="scripted", values={"max_requests_per_1_minute": 1, "max_tokens_per_1_minute": 10},
        )
        session.commit()
    line = dataclasses.replace(world.who, batch_id="batch_abc")

    async def run(who, request_id: str) -> None:  # type: ignore[no-untyped-def]
        admission = await world.limiter.admit(who, model="scripted", request_id=request_id)
        try:
            plan = await plan_chat(ChatInput("scripted", (Turn("user", "hi"),)), world.model, admission, max_n=4)
            async with world.pipeline.run(plan.generation) as generation:
                async for _ in generation.events():
                    pass
        finally:
            await world.limiter.abandon(admission)

    async def main() -> None:
        for i in range(3):  # past the organization's 1 RPM and 10 TPM: batch work meets neither
            await run(line, f"line_{i}")
        with pytest.raises(RateLimitExceeded):  # an interactive request still does (its token estimate is over 10 TPM)
            await run(world.who, "interactive")

    asyncio.run(main())
    assert [r.priority for r in world.engine.submitted] == [Priority.BATCH] * 3
    with world.sessions() as session:
        rows = [(r.request_id, r.outcome, r.batch) for r in session.scalars(select(UsageRecord).order_by(UsageRecord.request_id))]
    assert rows == [(f"line_{i}", "completed", True) for i in range(3)]
