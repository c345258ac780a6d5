"""The batch runner over scripted models, through the SDK, with the input file given in memory
(`MemoryFiles`): the lifecycle, validation with line numbers, lines answered exactly as the interactive
requests, cancel, expiry with the clock moved, stream refusals, a resume after a dead replica, and tenancy."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
from sqlalchemy import func, select

from batches.harness import CHAT_MODEL, EMBEDDING_MODEL, Served, chat_line, jsonl, served
from modelhost.store import batches as store
from modelhost.store.schema import UsageRecord
from support.fake_engine import ScriptedEngine


class ThreadGate:
    """`ScriptedEngine.gate` opened from the test's thread: generations wait for it on a worker thread."""

    def __init__(self) -> None:
        import threading

        self.event = threading.Event()

    async def wait(self) -> None:
        await anyio.to_thread.run_sync(self.event.wait, abandon_on_cancel=True)

    def open(self) -> None:
        self.event.set()


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


def start(world: Served, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions", **extra: Any) -> Any:
    assert world.files is not None
    file_id = world.files.add(world.a.principal, jsonl(lines))
    return world.client().batches.create(input_file_id=file_id, endpoint=endpoint, completion_window="24h", **extra)  # type: ignore[arg-type]


@pytest.fixture
def world(tmp_path: Path) -> Any:
    with served(tmp_path, fake_files=True) as world:
        yield world


def test_a_chat_batch_runs_every_line_once_and_answers_as_the_interactive_request(world: Served) -> None:
    bad = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "n": 0}
    lines = [chat_line("one"), chat_line("two", max_tokens=5), {"custom_id": "three", "method": "POST", "url": "/v1/chat/completions", "body": bad}]
    client = world.client()
    created = start(world, lines, metadata={"purpose": "test"})
    assert created.status == "validating" and created.id.startswith("batch_") and created.metadata == {"purpose": "test"}
    assert created.expires_at == created.created_at + 24 * 3600

    batch = world.finished(client, created.id)

    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 2, 1)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.model == CHAT_MODEL
    assert batch.usage is not None and batch.usage.input_tokens > 0 and batch.usage.output_tokens > 0
    assert world.files is not None and batch.output_file_id and batch.error_file_id
    output = lines_of(world.files.read(batch.output_file_id))
    assert [line["custom_id"] for line in output] == ["one", "two"]
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"].startswith("req_")
        assert line["response"]["body"]["object"] == "chat.completion"
        assert line["response"]["body"]["choices"][0]["message"]["content"] == "Hello, world"
    assert sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output) == batch.usage.input_tokens

    [error] = lines_of(world.files.read(batch.error_file_id))
    interactive = httpx.post(f"{world.base_url}/chat/completions", json=bad, headers={"Authorization": f"Bearer {world.a.secret}"})
    assert error["custom_id"] == "three" and error["response"]["status_code"] == interactive.status_code == 400
    assert interactive.content in world.files.read(batch.error_file_id)  # the body's very bytes
    with world.sessions() as session:  # one ledger row per line that ran, marked as this batch's work
        ids = [o["response"]["body"]["id"] for o in output]
        rows = session.scalar(select(func.count()).select_from(UsageRecord).where(UsageRecord.request_id.in_(ids), UsageRecord.batch.is_(True)))
    assert rows == 2
    with world.sessions() as session:  # the lines' answers are in the files now, not kept twice
        assert session.scalar(select(func.count()).select_from(store.BatchLine).where(store.BatchLine.batch_id == batch.id)) == 0


def test_validation_errors_name_their_lines(world: Served) -> None:
    lines = [
        chat_line("a"),
        {**chat_line("b"), "url": "/v1/completions"},
        chat_line("a"),
        {**chat_line("c"), "body": {"model": "other-model", "messages": []}},
    ]
    assert world.files is not None
    raw = jsonl(lines[:2]) + b"{not json\n" + jsonl(lines[2:])
    file_id = world.files.add(world.a.principal, raw)
    client = world.client()
    batch = world.finished(client, client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id)

    assert batch.status == "failed" and batch.failed_at and batch.errors is not None
    found = {(e.line, e.code) for e in batch.errors.data}
    assert found == {(2, "mismatched_endpoint"), (3, "invalid_json_line"), (4, "duplicate_custom_id"), (5, "mismatched_model")}
    assert batch.output_file_id is None and batch.error_file_id is None and batch.request_counts.total == 0


def test_a_line_longer_than_a_request_body_fails_validation_naming_it(tmp_path: Path) -> None:
    with served(tmp_path, fake_files=True, max_body_bytes=1024) as world:
        batch = start(world, [chat_line("a"), chat_line("b", content="x" * 2000)])
        batch = world.finished(world.client(), batch.id)
        assert batch.status == "failed" and [(e.line, e.code) for e in batch.errors.data] == [(2, "line_too_long")]


def test_a_model_the_project_may_not_use_fails_validation_on_its_line(world: Served) -> None:
    batch = start(world, [{**chat_line("a"), "body": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}}])
    batch = world.finished(world.client(), batch.id)
    assert batch.status == "failed" and [(e.line, e.code) for e in batch.errors.data] == [(1, "model_not_found")]


def test_a_batch_whose_every_line_failed_completes_with_only_an_error_file(world: Served) -> None:
    batch = world.finished(world.client(), start(world, [chat_line("a", n=0), chat_line("b", stream=True)]).id)
    assert batch.status == "completed" and batch.output_file_id is None and batch.error_file_id
    assert world.files is not None
    errors = {line["custom_id"]: line["response"] for line in lines_of(world.files.read(batch.error_file_id))}
    assert errors["b"]["status_code"] == 400 and errors["b"]["body"]["error"]["param"] == "stream"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 2)


@pytest.mark.parametrize(
    ("endpoint", "body", "kind"),
    [
        ("/v1/completions", {"model": CHAT_MODEL, "prompt": "Once", "max_tokens": 4}, "text_completion"),
        ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": ["a", "b"]}, "list"),
        ("/v1/responses", {"model": CHAT_MODEL, "input": "Hi", "max_output_tokens": 16}, "response"),
    ],
)
def test_each_endpoint_runs_in_a_batch(tmp_path: Path, endpoint: str, body: dict[str, Any], kind: str) -> None:
    with served(tmp_path, fake_files=True) as world:
        line = {"custom_id": "x", "method": "POST", "url": endpoint, "body": body}
        batch = world.finished(world.client(), start(world, [line], endpoint=endpoint).id)
        assert batch.status == "completed" and batch.request_counts.completed == 1, batch
        assert world.files is not None and batch.output_file_id
        [out] = lines_of(world.files.read(batch.output_file_id))
        assert out["response"]["status_code"] == 200 and out["response"]["body"]["object"] == kind


def test_create_refuses_a_bad_endpoint_window_or_file(world: Served) -> None:
    client = world.client()
    assert world.files is not None
    good = world.files.add(world.a.principal, jsonl([chat_line("a")]))
    theirs = world.files.add(world.b.principal, jsonl([chat_line("a")]))
    wrong_purpose = world.files.add(world.a.principal, jsonl([chat_line("a")]), purpose="assistants")
    for kwargs, param in (
        ({"input_file_id": good, "endpoint": "/v1/moderations", "completion_window": "24h"}, "endpoint"),
        ({"input_file_id": good, "endpoint": "/v1/chat/completions", "completion_window": "1h"}, "completion_window"),
        ({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": theirs, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": wrong_purpose, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(**kwargs)  # type: ignore[arg-type]
        assert refused.value.body["param"] == param  # type: ignore[index]


def test_another_projects_batch_is_not_found(world: Served) -> None:
    mine = start(world, [chat_line("a")])
    theirs = world.client(world.b)
    with pytest.raises(openai.NotFoundError):
        theirs.batches.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.batches.cancel(mine.id)
    assert [b.id for b in theirs.batches.list()] == []
    assert mine.id in [b.id for b in world.client().batches.list()]


def test_list_pages_newest_first(world: Served) -> None:
    ids = [start(world, [chat_line("a")]).id for _ in range(3)]
    client = world.client()
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == ids[:1] and not rest.has_more


def _gated(tmp_path: Path, **settings: Any) -> tuple[Any, ThreadGate]:
    gate = ThreadGate()
    engine = ScriptedEngine(context_length=4096, gate=gate)  # type: ignore[arg-type]
    return served(tmp_path, engine=engine, fake_files=True, batch_concurrency_per_batch=1, **settings), gate


def test_cancel_keeps_the_finished_lines_and_starts_no_more(tmp_path: Path) -> None:
    context, gate = _gated(tmp_path)
    with context as world:
        client = world.client()
        batch = start(world, [chat_line(f"r{i}") for i in range(4)])
        world.wait(client, batch.id, lambda b: b.status == "in_progress")
        _wait_running(world, batch.id, 1)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        gate.open()
        done = world.finished(client, batch.id)
        assert done.status == "cancelled" and done.cancelled_at
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 1, 0)
        assert world.files is not None and done.output_file_id and done.error_file_id is None
        assert [line["custom_id"] for line in lines_of(world.files.read(done.output_file_id))] == ["r0"]
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)


def test_expiry_sends_the_lines_not_run_to_the_error_file(tmp_path: Path) -> None:
    context, gate = _gated(tmp_path)
    with context as world:
        client = world.client()
        batch = start(world, [chat_line(f"r{i}") for i in range(3)])
        _wait_running(world, batch.id, 1)
        world.clock.move(hours=24, seconds=1)
        gate.open()
        done = world.finished(client, batch.id)
        assert done.status == "expired" and done.expired_at and done.completed_at is None
        assert world.files is not None and done.output_file_id and done.error_file_id
        assert [line["custom_id"] for line in lines_of(world.files.read(done.output_file_id))] == ["r0"]
        expired = lines_of(world.files.read(done.error_file_id))
        assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in expired] == [("r1", None, "batch_expired"), ("r2", None, "batch_expired")]
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 0)


def _wait_running(world: Served, batch_id: str, count: int, *, at_most: bool = False) -> None:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with world.sessions() as session:
            running = store.running_lines(session, batch_id, now=world.clock())
            if running <= count if at_most else running >= count:
                return
        time.sleep(0.02)
    raise AssertionError("no line started")


def test_a_dead_replicas_lines_are_taken_over_and_finished_lines_not_run_again(tmp_path: Path) -> None:
    """The state kill -9 leaves: line 1 finished, line 2 claimed by a replica that is gone (its lease lapsed)."""
    with served(tmp_path, fake_files=True, batch_runner_enabled=False) as world:
        assert world.files is not None
        file_id = world.files.add(world.a.principal, jsonl([chat_line(f"r{i}") for i in range(1, 5)]))
        created = world.client().batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        now = world.clock()
        with world.sessions.begin() as session:
            row = session.get(store.BatchRow, created.id)
            row.status, row.in_progress_at, row.request_total, row.model = store.IN_PROGRESS, now, 4, CHAT_MODEL
            session.flush()
            assert store.claim_line(session, created.id, 1, "r1", "dead", now=now, until=now + timedelta(seconds=60))
            finished = store.LineResult(store.SUCCEEDED, "batch_req_old", 200, "req_old", '{"kept": true}', 3, 0, 2)
            assert store.finish_line(session, created.id, 1, "dead", finished, now=now)
            assert store.claim_line(session, created.id, 2, "r2", "dead", now=now, until=now - timedelta(seconds=1))
        import asyncio

        future = asyncio.run_coroutine_threadsafe(world.runner.start(), world.loop)
        future.result(5)
        done = world.finished(world.client(), created.id)
        assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (4, 0)
        output = lines_of(world.files.read(done.output_file_id))
        assert [line["custom_id"] for line in output] == ["r1", "r2", "r3", "r4"]
        assert output[0]["response"]["body"] == {"kept": True}  # not run again
        assert done.usage.input_tokens == 3 + sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output[1:])
        assert len(world.engine.submitted) == 3


def test_a_forged_header_named_like_the_in_process_key_does_nothing(world: Served) -> None:
    from modelhost.batches.dispatch import BATCH_PRINCIPAL

    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx.post(f"{world.base_url}/chat/completions", json=body, headers={BATCH_PRINCIPAL: "anything", "x-" + BATCH_PRINCIPAL: "1"})
    assert answer.status_code == 401


def test_a_line_refused_for_now_is_tried_again_not_failed(world: Served) -> None:
    import time

    world.engine.overloaded = True  # every generation is a 503 (the engine's queue is full)
    batch = start(world, [chat_line("busy")])
    _wait_running(world, batch.id, 1)
    time.sleep(0.3)
    world.engine.overloaded = False
    done = world.finished(world.client(), batch.id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (1, 0)


def test_a_batch_cancelled_while_validating_ends_cancelled_without_files(tmp_path: Path) -> None:
    import asyncio

    with served(tmp_path, fake_files=True, batch_runner_enabled=False) as world:
        client = world.client()
        batch = start(world, [chat_line("a")])
        assert client.batches.cancel(batch.id).status == "cancelling"
        asyncio.run_coroutine_threadsafe(world.runner.start(), world.loop).result(5)
        done = world.finished(client, batch.id)
        assert done.status == "cancelled" and done.in_progress_at is None and done.output_file_id is None and done.error_file_id is None
        assert world.engine.submitted == []


def test_an_input_file_deleted_under_a_running_batch_leaves_it_to_expire_with_what_ran(tmp_path: Path) -> None:
    context, gate = _gated(tmp_path)
    with context as world:
        client = world.client()
        batch = start(world, [chat_line(f"r{i}") for i in range(3)])
        _wait_running(world, batch.id, 1)
        assert world.files is not None
        del world.files.files[batch.input_file_id]
        gate.open()
        world.wait(client, batch.id, lambda b: b.request_counts.completed >= 1)
        _wait_running(world, batch.id, 0, at_most=True)
        world.clock.move(hours=25)
        done = world.finished(client, batch.id)
        assert done.status == "expired" and done.request_counts.completed in (1, 2) and done.output_file_id
        assert done.error_file_id is None  # the lines not run cannot be named without the file


def test_a_batch_past_the_enqueued_token_limit_fails_validation(tmp_path: Path) -> None:
    with served(tmp_path, fake_files=True, rate_limit_batch_enqueued_tokens=30) as world:
        client = world.client()
        small = world.finished(client, start(world, [chat_line("a", "x" * 10), chat_line("b", "y" * 10)]).id)
        assert small.status == "completed"
        with world.sessions() as session:
            row = session.get(store.BatchRow, small.id)
            assert row is not None and row.enqueued_tokens == 20  # a byte is a token for the scripted model
        large = world.finished(client, start(world, [chat_line("a", "x" * 20), chat_line("b", "y" * 20)]).id)
        assert large.status == "failed" and [(e.code, e.line) for e in large.errors.data] == [("token_limit_exceeded", None)]
        assert "Enqueued token limit reached" in large.errors.data[0].message


def test_lines_run_at_most_per_batch_and_per_organization_at_once(tmp_path: Path) -> None:
    import time

    gate = ThreadGate()
    engine = ScriptedEngine(context_length=4096, gate=gate)  # type: ignore[arg-type]
    with served(tmp_path, engine=engine, fake_files=True, batch_concurrency_per_batch=2, batch_concurrency_per_organization=3) as world:
        client = world.client()
        first, second = (start(world, [chat_line(f"{n}{i}") for i in range(4)]) for n in "ab")
        deadline = time.monotonic() + 10
        while len(engine.submitted) < 3:
            assert time.monotonic() < deadline, "the lines did not start"
            time.sleep(0.02)
        time.sleep(0.5)  # room for a fourth, were the bounds not kept
        with world.sessions() as session:
            running = [store.running_lines(session, b.id, now=world.clock()) for b in (first, second)]
        assert len(engine.submitted) == 3 and sum(running) == 3 and max(running) == 2
        gate.open()
        for batch in (first, second):
            assert world.finished(client, batch.id).request_counts.completed == 4


def test_a_stopping_runner_releases_its_lines_at_once(tmp_path: Path) -> None:
    import asyncio

    context, gate = _gated(tmp_path)
    with context as world:
        batch = start(world, [chat_line("a"), chat_line("b")])
        _wait_running(world, batch.id, 1)
        asyncio.run_coroutine_threadsafe(world.runner.stop(), world.loop).result(10)
        with world.sessions() as session:
            assert store.running_lines(session, batch.id, now=world.clock()) == 0  # another replica may take it now
            row = store.get(session, batch.id)
            assert row is not None and row.lease_owner is None
        gate.open()
        asyncio.run_coroutine_threadsafe(world.runner.start(), world.loop).result(5)
        done = world.finished(world.client(), batch.id)
        assert done.status == "completed" and done.request_counts.completed == 2


def test_a_batch_of_a_project_archived_meanwhile_is_cancelled_keeping_what_ran(tmp_path: Path) -> None:
    from modelhost.organization import operations

    context, gate = _gated(tmp_path)
    with context as world:
        assert world.files is not None
        theirs = world.client(world.b)
        file_id = world.files.add(world.b.principal, jsonl([chat_line(f"r{i}") for i in range(3)]))
        batch = theirs.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        _wait_running(world, batch.id, 1)
        operations.archive_project(world.sessions, world.b.project)
        gate.open()
        with world.sessions() as session:
            import time

            deadline = time.monotonic() + 20
            while (row := store.get(session, batch.id)) is not None and row.status != "cancelled":
                assert time.monotonic() < deadline, row.status
                time.sleep(0.05)
                session.expire_all()
            assert row is not None and (row.request_completed, row.request_failed) == (1, 0)
