"""R15: the enqueued-token limit holds for batches validated at once, and counts a batch named by an alias.

Each validation read the sum of the other unfinished batches (those still validating count 0) and
then wrote its own: batches validated in the same poll round all passed. And the row stored the
model as the lines named it while the limit sums rows by the canonical id, so a batch naming an
alias was never counted against later ones."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from batches.harness import CHAT_MODEL, chat_line, jsonl, served
from modelhost.engine.registry import ModelRegistry, ServedModel
from modelhost.store import batches as store
from support.fake_engine import ScriptedEngine
from batches.test_runner import ThreadGate


def _queue(world: Any, count: int, model: str = CHAT_MODEL, prefix: str = "race") -> list[str]:
    """`count` batches of 20 input tokens, written in one transaction so one poll round validates them together."""
    assert world.files is not None
    who = world.a.principal
    ids = []
    now = world.clock()
    with world.sessions.begin() as session:
        for i in range(count):
            body_lines = [chat_line("a", "x" * 10), chat_line("b", "y" * 10)]
            for line in body_lines:
                line["body"]["model"] = model
            file_id = world.files.add(who, jsonl(body_lines))
            batch_id = f"batch_{prefix}_{i}"
            session.add(
                store.BatchRow(
                    id=batch_id, organization_id=who.organization_id, project_id=who.project_id, user_id=who.user_id or None,
                    api_key_id=who.key_id or None, key_kind=who.key_kind, endpoint="/v1/chat/completions", model=None,
                    input_file_id=file_id, completion_window="24h", status=store.VALIDATING, created_at=now,
                    expires_at=now + timedelta(hours=24), request_total=0, request_completed=0, request_failed=0,
                    input_tokens=0, cached_tokens=0, output_tokens=0, enqueued_tokens=0,
                )
            )
            ids.append(batch_id)
    world.app.state.batch_runner.wake()
    return ids


def _statuses(world: Any, ids: list[str]) -> list[str]:
    with world.sessions() as session:
        return [session.get(store.BatchRow, i).status for i in ids]


def _settled(world: Any, ids: list[str]) -> list[str]:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        statuses = _statuses(world, ids)
        if store.VALIDATING not in statuses:
            return statuses
        time.sleep(0.05)
    raise AssertionError(f"still validating: {statuses}")


def test_batches_validated_together_do_not_pass_the_limit_together(tmp_path: Path) -> None:
    gate = ThreadGate()  # closed: a batch that passes stays in_progress, its tokens enqueued
    engine = ScriptedEngine(context_length=4096, gate=gate)  # type: ignore[arg-type]
    try:
        with served(tmp_path, engine=engine, fake_files=True, rate_limit_batch_enqueued_tokens=30) as world:
            statuses = _settled(world, _queue(world, 6))
            assert statuses.count(store.IN_PROGRESS) == 1, statuses  # 20 + 20 > 30
            assert statuses.count(store.FAILED) == 5, statuses
            gate.open()
    finally:
        gate.open()


def test_a_batch_naming_an_alias_is_counted_under_the_model(tmp_path: Path, monkeypatch: Any) -> None:
    import batches.harness as harness

    def with_alias(engine: ScriptedEngine) -> ModelRegistry:
        return ModelRegistry(
            [ServedModel(id=CHAT_MODEL, aliases=("nickname",), created=0, owned_by="tests", engine=engine, fingerprint="fp")]  # type: ignore[arg-type]
        )

    monkeypatch.setattr(harness, "registry", with_alias)
    gate = ThreadGate()
    engine = ScriptedEngine(context_length=4096, gate=gate)  # type: ignore[arg-type]
    try:
        with served(tmp_path, engine=engine, fake_files=True, rate_limit_batch_enqueued_tokens=30) as world:
            first = _queue(world, 1, model="nickname")
            assert _settled(world, first) == [store.IN_PROGRESS]
            with world.sessions() as session:
                assert session.get(store.BatchRow, first[0]).model == CHAT_MODEL
            assert _settled(world, _queue(world, 1, prefix="canonical")) == [store.FAILED]  # 20 + 20 > 30
            gate.open()
    finally:
        gate.open()
