"""Background responses across replicas sharing PostgreSQL: followed and cancelled from the replica
that does not run them, and never left `in_progress` (nor their ledger rows pending) when the
replica that runs them is killed with SIGKILL.

The replicas beat their heartbeat every second (conftest.py), so a killed replica is presumed
dead after `STALE_SECONDS`. Generations are short, except the ones that must still be running when
they are cancelled or killed: a JSON schema that demands hundreds of numbers keeps those going
whatever the tiny model would rather say.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from modelhost.store import UsageEntry, UsageLedger, open_engine, session_factory
from responses.spec_events import validate_event
from serverproc import MODEL, ServerProcess
from support.openapi_spec import validate

from .conftest import STALE_SECONDS, Tenant, new_tenant, start_replicas

Pair = tuple[ServerProcess, ServerProcess]
RUNNING = ("queued", "in_progress")
# Hundreds of numbers: the grammar keeps the generation going for many seconds on the tiny model.
LONG = {
    "input": "List numbers.",
    "max_output_tokens": 2000,
    "text": {
        "format": {
            "type": "json_schema",
            "name": "numbers",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 600}},
                "required": ["numbers"],
                "additionalProperties": False,
            },
        }
    },
}


def _json(raw: Any) -> dict[str, Any]:
    return raw.http_response.json()  # type: ignore[no-any-return]


def _until(client: openai.OpenAI, response_id: str, done: Any, timeout: float) -> dict[str, Any]:
    """Retrieve the response until `done(response)` holds; its last state (spec-valid each time)."""
    deadline = time.monotonic() + timeout
    while True:
        response = _json(client.responses.with_raw_response.retrieve(response_id))
        validate("Response", response)
        if done(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def _ledger_row(database: str, request_id: str, settled: bool, timeout: float) -> UsageEntry | None:
    """The ledger row of `request_id` (pending rows included) once it is there (and, if asked, settled)."""
    ledger = UsageLedger(session_factory(open_engine(database)))
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = next((e for e in ledger.entries(include_pending=True) if e.request_id == request_id), None)
        if row is not None and (not settled or row.outcome != "pending"):
            return row
        time.sleep(0.2)
    return row


def _events(wire: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for block in wire.read().decode().strip().split("\n\n"):
        if not block:
            continue
        head, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        validate_event(event)
        events.append(event)
    return events


def _replay(server: ServerProcess, secret: str, response_id: str, after: int) -> list[dict[str, Any]]:
    url = f"{server.base_url}/responses/{response_id}"
    params = {"stream": "true", "starting_after": str(after)}
    with httpx.stream("GET", url, params=params, headers={"Authorization": f"Bearer {secret}"}, timeout=120) as wire:
        assert wire.status_code == 200
        return _events(wire)


def test_a_background_response_is_followed_from_the_other_replica(pair: Pair) -> None:
    a, b = pair
    tenant = new_tenant(a, "Followed elsewhere")
    queued = _json(tenant.client(a).responses.with_raw_response.create(model=MODEL, input="Say hi", max_output_tokens=12, background=True))
    validate("Response", queued)
    assert queued["status"] == "queued" and queued["background"] is True

    # B does not run it: it waits for A to finish, then reads the events A stored.
    followed = _replay(b, tenant.secret, queued["id"], after=2)
    numbers = [e["sequence_number"] for e in followed]
    assert numbers and numbers[0] == 3 and numbers == sorted(set(numbers))
    assert followed[-1]["type"] in ("response.completed", "response.incomplete")
    whole = _replay(a, tenant.secret, queued["id"], after=-1)
    assert [e["type"] for e in whole[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert whole[3:] == followed
    with tenant.client(b).responses.stream(response_id=queued["id"], starting_after=len(whole) - 2) as resumed:
        assert [e.sequence_number for e in resumed] == [len(whole) - 1]
    assert _json(tenant.client(b).responses.with_raw_response.retrieve(queued["id"])) == followed[-1]["response"]


def test_a_cancel_from_the_other_replica_is_final_and_idempotent(pair: Pair, database: str) -> None:
    a, b = pair
    tenant = new_tenant(a, "Cancelled elsewhere")
    on_a, on_b = tenant.client(a), tenant.client(b)
    started = on_a.responses.create(model=MODEL, background=True, **LONG)  # type: ignore[arg-type]
    running = _until(on_b, started.id, lambda r: r["status"] == "in_progress", timeout=30)
    assert running["status"] == "in_progress"

    cancelled = _json(on_b.responses.with_raw_response.cancel(started.id))
    validate("Response", cancelled)
    assert cancelled["status"] == "cancelled"
    assert _json(on_b.responses.with_raw_response.cancel(started.id)) == cancelled  # idempotent, on either replica
    assert _json(on_a.responses.with_raw_response.cancel(started.id)) == cancelled

    # A learns of the cancel from the store and stops: its row settles cancelled, short of the budget,
    # and its end does not overwrite the cancel.
    row = _ledger_row(database, started.id, settled=True, timeout=60)
    assert row is not None and row.outcome == "cancelled" and row.completion_tokens < LONG["max_output_tokens"]  # type: ignore[operator]
    assert _json(on_a.responses.with_raw_response.retrieve(started.id)) == cancelled


@dataclass(frozen=True)
class Killed:
    """A background response whose replica was killed with SIGKILL while it was in progress."""

    tenant: Tenant
    response_id: str
    killed_at: float  # time.monotonic()


@pytest.fixture(scope="module")
def killed(fleet_env: dict[str, str], database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Killed]:
    """A third replica of the fleet starts a long background response and is killed while it runs."""
    (doomed,) = start_replicas([tmp_path_factory.mktemp("doomed")], fleet_env)
    try:
        tenant = new_tenant(doomed, "Killed mid-response")
        started = _json(tenant.client(doomed).responses.with_raw_response.create(model=MODEL, background=True, **LONG))  # type: ignore[arg-type]
        validate("Response", started)
        assert started["status"] == "queued"
        running = _until(tenant.client(doomed), started["id"], lambda r: r["status"] == "in_progress", timeout=30)
        assert running["status"] == "in_progress"
        pending = _ledger_row(database, started["id"], settled=False, timeout=5)
        assert pending is not None and pending.outcome == "pending"
        assert doomed.proc is not None
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(timeout=10)
        yield Killed(tenant, started["id"], time.monotonic())
    finally:
        doomed.stop()


def test_a_response_whose_replica_was_killed_fails_within_the_stale_window_and_its_row_is_swept(
    pair: Pair, database: str, killed: Killed
) -> None:
    _, survivor = pair
    on_survivor = killed.tenant.client(survivor)
    ended = _until(on_survivor, killed.response_id, lambda r: r["status"] not in RUNNING, timeout=STALE_SECONDS + 10)
    assert ended["status"] == "failed", ended["status"]
    assert ended["error"]["code"] == "server_error"
    assert time.monotonic() - killed.killed_at < STALE_SECONDS + 10
    assert _json(on_survivor.responses.with_raw_response.retrieve(killed.response_id)) == ended  # and stays failed

    # The survivor's sweep settles the dead replica's pending row as interrupted.
    row = _ledger_row(database, killed.response_id, settled=True, timeout=STALE_SECONDS + 10)
    assert row is not None and row.outcome == "interrupted"


def test_following_a_response_whose_replica_was_killed_ends_with_response_failed(pair: Pair, killed: Killed) -> None:
    _, survivor = pair
    began = time.monotonic()
    followed = _replay(survivor, killed.tenant.secret, killed.response_id, after=-1)
    assert time.monotonic() - began < STALE_SECONDS + 10  # it does not wait for a replica that is gone
    assert followed and followed[-1]["type"] == "response.failed"
    assert followed[-1]["response"]["status"] == "failed"
    numbers = [e["sequence_number"] for e in followed]
    assert numbers == sorted(set(numbers))
