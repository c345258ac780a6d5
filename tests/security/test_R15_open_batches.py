"""R15: a project may have at most `batch_max_open_per_project` batches not yet ended. Unlimited, each
`POST /v1/batches` (cheap for the client: one small input file named again and again) added a batch
row the runner polls and validates, reading the file each time."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import openai

from batches.harness import chat_line, jsonl, served
from batches.test_runner import ThreadGate
from support.fake_engine import ScriptedEngine
from support.openapi_spec import validate


def test_a_project_past_its_open_batches_gets_a_429(tmp_path: Path) -> None:
    gate = ThreadGate()  # closed: the batches stay in progress
    engine = ScriptedEngine(context_length=4096, gate=gate)  # type: ignore[arg-type]
    try:
        with served(tmp_path, engine=engine, fake_files=True, batch_max_open_per_project=3) as world:
            assert world.files is not None
            file_id = world.files.add(world.a.principal, jsonl([chat_line("r0")]))
            client = world.client()

            def create() -> Any:
                return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")

            results: list[Any] = []

            def attempt() -> None:
                try:
                    results.append(create())
                except openai.APIStatusError as exc:
                    results.append(exc)

            threads = [threading.Thread(target=attempt) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            made = [r for r in results if not isinstance(r, Exception)]
            refused = [r for r in results if isinstance(r, Exception)]
            assert len(made) == 3 and len(refused) == 5, results
            for error in refused:
                assert error.status_code == 429 and error.code == "too_many_open_batches"
                assert error.response.headers.get("x-should-retry") == "false"
                body = error.response.json()
                validate("ErrorResponse", body)
                assert body["error"]["type"] == "requests" and "3 batches" in body["error"]["message"]

            # Another project's batches are not counted.
            theirs = world.files.add(world.b.principal, jsonl([chat_line("t0")]))
            world.client(world.b).batches.create(input_file_id=theirs, endpoint="/v1/chat/completions", completion_window="24h")

            # A cancelling batch still counts; once cancelled, there is room again.
            client.batches.cancel(made[0].id)
            assert isinstance(_error(create), openai.RateLimitError)
            gate.open()
            assert world.finished(client, made[0].id).status == "cancelled"
            assert create().status == "validating"
    finally:
        gate.open()


def test_zero_means_no_limit(tmp_path: Path) -> None:
    with served(tmp_path, fake_files=True, batch_max_open_per_project=0, batch_runner_enabled=False) as world:
        assert world.files is not None
        file_id = world.files.add(world.a.principal, jsonl([chat_line("r0")]))
        client = world.client()
        for _ in range(5):
            client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        assert len(client.batches.list().data) == 5


def _error(call: Any) -> Exception:
    try:
        call()
    except openai.APIStatusError as exc:
        return exc
    raise AssertionError("not refused")
