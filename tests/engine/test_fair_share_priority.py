"""Batch lines in a forwarding engine (`FairShareEngine`): forwarded only while no interactive request
is ready, and never more than the batch share in flight, so interactive requests find room."""

from __future__ import annotations

import dataclasses

from modelhost.engine.base import GenerationRequest, Priority
from modelhost.engine.fair_share import InFlightLimits

from .test_fair_share import _Client, _engine, _request, _run, _settle


def _batch(rid: str, organization: str, project: str = "p", *, n: int = 1) -> GenerationRequest:
    return dataclasses.replace(_request(rid, organization, project, n=n), priority=Priority.BATCH)


def test_batch_work_may_hold_three_quarters_of_the_sequences_in_flight_by_default() -> None:
    assert InFlightLimits.of(8).batch_total == 6
    assert InFlightLimits.of(256).batch_total == 192
    assert InFlightLimits.of(2).batch_total == 1
    assert InFlightLimits.of(1).batch_total == 1  # one sequence: batch work cannot be kept out of it
    assert InFlightLimits.of(8, batch=3).batch_total == 3
    assert InFlightLimits.of(8, batch=30).batch_total == 8


def test_batch_lines_leave_a_quarter_for_interactive_requests_which_are_forwarded_at_once() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=8, per_organization=8)  # batch share: 6
        client = _Client(engine)
        for i in range(10):
            client.send(_batch(f"b{i}", "A", "p"))
        await _settle()
        assert inner.ids() == [f"b{i}" for i in range(6)] and engine.state()["queue_depth"] == 4
        client.send(_request("i0", "A", "q"))
        client.send(_request("i1", "B", "p"))
        assert inner.ids()[-2:] == ["i0", "i1"] and engine.in_flight == 8  # no wait behind the batch lines
        await _settle()
        for task in client.tasks.values():
            task.cancel()
        await _settle()
        assert engine.in_flight == 0 and engine.queue.held == 0

    _run(main)


def test_waiting_interactive_requests_go_before_waiting_batch_lines() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=2, per_organization=2)
        client = _Client(engine)
        client.send(_request("i0", "A", "p"))
        client.send(_request("i1", "A", "p"))
        client.send(_batch("b0", "A", "p"))  # waits: the upstream is full
        client.send(_batch("b1", "B", "p"))
        client.send(_request("i2", "A", "p"))  # arrives after the batch lines, goes before them
        await _settle()
        assert inner.ids() == ["i0", "i1"]
        inner.end("i0")
        await _settle()
        assert inner.ids()[-1] == "i2"
        inner.end("i1")
        await _settle()
        assert inner.ids()[-1] == "b1"  # round robin among batch lines: B has nothing in flight
        inner.end("i2")
        await _settle()
        assert inner.ids()[-1] == "b1" and engine.in_flight == 1  # of 2 in flight, batch work may hold 1
        inner.end("b1")
        await _settle()
        assert inner.ids()[-1] == "b0"
        for task in client.tasks.values():
            task.cancel()
        await _settle()
        assert engine.in_flight == 0 and engine.queue.held == 0

    _run(main)


def test_a_batch_request_wider_than_the_batch_share_still_runs() -> None:
    async def main() -> None:
        engine, inner = await _engine(in_flight=4, per_organization=4)  # batch share: 3
        client = _Client(engine)
        client.send(_batch("wide", "A", n=4))
        await _settle()
        assert inner.ids() == ["wide"] and engine.in_flight == 3  # counted as the batch share, never stuck
        client.send(_request("i0", "B"))
        assert inner.ids()[-1] == "i0"
        await _settle()
        for task in client.tasks.values():
            task.cancel()
        await _settle()
        assert engine.in_flight == 0

    _run(main)
