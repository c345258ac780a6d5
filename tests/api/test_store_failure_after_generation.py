"""A store that fails after the answer was generated (and billed): a 503 the OpenAI SDKs do not retry
(`x-should-retry: false`), since a retry would generate and bill it again; a stream ends with
`error` and `response.failed` rather than being cut. A background response followed from the store
ends with its terminal event even when none was stored."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from modelhost.api import responses as api
from modelhost.chat_completions import stored
from modelhost.errors import ServiceUnavailable
from modelhost.protocol.chat import ChatCompletionRequest
from modelhost.protocol.responses import CreateResponse
from modelhost.responses import context as ctx
from modelhost.responses import render
from modelhost.store.tenancy import utcnow
from pipeline.world import World
from support.fake_engine import ScriptedEngine

HI = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]


def _broken_store() -> Any:
    raise OperationalError("INSERT", None, Exception("the database is away"))


def _saving(body: CreateResponse, world: World) -> api._Saving:
    state = SimpleNamespace(sessions=_broken_store, settings=SimpleNamespace(stored_objects_retention_days=30))
    return api._Saving(state, world.who, body, ctx.Context([], HI, 1), utcnow())  # type: ignore[arg-type]


def _not_retried(error: ServiceUnavailable) -> None:
    assert error.status == 503 and error.headers == {"x-should-retry": "false"}
    assert "generated and billed" in error.message and "could not be stored" in error.message


def test_a_response_that_cannot_be_stored_is_a_503_the_sdk_does_not_retry(tmp_path: Path) -> None:
    world = World(tmp_path)
    body = CreateResponse.model_validate({"model": "scripted", "input": "hi"})
    with pytest.raises(ServiceUnavailable) as caught:
        asyncio.run(_saving(body, world)({"id": "resp_x", "status": "completed", "output": []}))
    _not_retried(caught.value)


def test_a_stored_chat_completion_that_cannot_be_stored_is_a_503_the_sdk_does_not_retry(tmp_path: Path) -> None:
    world = World(tmp_path)
    request = ChatCompletionRequest.model_validate({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "store": True})
    completion = {"id": "chatcmpl-x", "model": "scripted", "object": "chat.completion", "created": 0, "choices": []}
    with pytest.raises(ServiceUnavailable) as caught:
        stored.save(_broken_store, world.who, request, completion, retention_days=30)  # type: ignore[arg-type]
    _not_retried(caught.value)


def test_a_stream_whose_response_cannot_be_stored_ends_with_response_failed(tmp_path: Path) -> None:
    world = World(tmp_path, ScriptedEngine(context_length=1024))
    body = CreateResponse.model_validate({"model": "scripted", "input": "hi", "stream": True})

    async def main() -> list[dict[str, Any]]:
        chat = await ctx.plan(body, ctx.Context([], HI, 1), world.model, await world.admit("resp_s"), max_n=4)
        run = await world.pipeline.run(chat.generation).__aenter__()
        frame = render.frame(body, "resp_s", "scripted")
        chunks = [chunk async for chunk in api._stream(run, run.events(), chat, frame, body, _saving(body, world))]
        return [json.loads(line[len(b"data: ") :]) for chunk in chunks for line in chunk.splitlines() if line.startswith(b"data: ")]

    events = asyncio.run(main())
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert "could not be stored" in events[-2]["message"]
    assert events[-1]["response"]["status"] == "failed"


@pytest.mark.parametrize(
    ("status", "stored_types", "after", "expected"),
    [
        ("failed", [], -1, ("response.failed", 0)),  # marked failed after its replica stopped: nothing stored
        ("failed", ["response.created", "response.queued"], -1, ("response.failed", 2)),
        ("failed", ["response.created", "response.queued"], 7, ("response.failed", 8)),
        ("completed", [], 3, ("response.completed", 4)),
        ("incomplete", [], -1, ("response.incomplete", 0)),
        ("failed", ["response.created", "error", "response.failed"], -1, None),  # it has its own
        ("cancelled", [], -1, None),
    ],
)
def test_a_stored_stream_without_its_terminal_event_ends_with_one_built_from_the_response(
    status: str, stored_types: list[str], after: int, expected: tuple[str, int] | None
) -> None:
    response = {"id": "resp_x", "status": status}
    events = [{"type": kind, "sequence_number": i} for i, kind in enumerate(stored_types)]
    last = api._missing_terminal(response, events, after)
    if expected is None:
        assert last is None
    else:
        assert last == (expected[0], {"type": expected[0], "response": response, "sequence_number": expected[1]})


@pytest.mark.parametrize("value", ["--1", "²", "٣", "１", "-2", "1" * 13, "", " 1", "1.0"])
def test_starting_after_and_limit_take_ascii_integers_only(value: str) -> None:
    for parse in (api._starting_after, api._limit):
        with pytest.raises(api.InvalidRequest):
            parse(value)
    assert api._starting_after("-1") == -1 and api._starting_after("12") == 12 and api._limit("100") == 100
