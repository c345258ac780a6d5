"""Issue #12 item 1: a JSON schema's compile cost is bounded before anything is built.

A ~200-byte `response_format` with `"pattern": "^x{0,200000000}$"` used to take the server to
4.7 GB and ~18 s of CPU before its 400. Now every cost is checked from the schema alone (a 400 naming
what is too large, in milliseconds), everything within the bounds compiles in under a second and
64 MB, and the compile itself runs in a capped, killable worker process. Time limits here are
loose, since this machine is shared and noisy (a runaway took 18 s, so they still fail on the old
code); `bench/schema_bounds.py` measures the real figures against the targets (50 ms, 1 s).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from modelhost.engine import schema_bounds
from modelhost.engine.grammar import compile_schema
from modelhost.engine.grammar_compiler import GrammarCompiler
from modelhost.engine.schema_bounds import GrammarError, check_schema
from serverproc import MODEL

from .conftest import Guarded
from .schema_shapes import HOSTILE, WITHIN, string as _string


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_every_costly_schema_class_is_refused_before_any_work_naming_the_bound(name: str) -> None:
    schema, words = HOSTILE[name]
    started = time.perf_counter()
    with pytest.raises(GrammarError) as refused:
        check_schema(schema)
    assert time.perf_counter() - started < 0.5
    assert words in str(refused.value)


@pytest.mark.parametrize("name", sorted(WITHIN))
def test_every_schema_within_the_bounds_compiles_quickly_in_64_mb(name: str) -> None:
    compiler = GrammarCompiler(workers=1)
    try:
        compiler.compile({"type": "string"})  # start the worker outside the measurement
        worker = compiler._idle[0]
        started = time.perf_counter()
        grammar = compiler.compile(WITHIN[name])
        elapsed = time.perf_counter() - started
        peak_kib = _peak_rss_kib(worker.proc.pid)
    finally:
        compiler.close()
    assert grammar.startswith("") and "root ::=" in grammar
    assert elapsed < 5.0, f"{name}: {elapsed:.2f} s"
    assert peak_kib < 64 * 1024, f"{name}: worker peaked at {peak_kib} KiB"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_runaway_compile_is_killed_in_its_worker_and_the_next_compile_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the bounds were ever wrong, the worker (not the server) pays: capped memory, a deadline."""
    monkeypatch.setattr("modelhost.engine.grammar_compiler.check_schema", lambda schema: None)
    compiler = GrammarCompiler(workers=1, compile_seconds=3.0, memory_bytes=128 * 1024 * 1024)
    own_before = _peak_rss_kib(_self_pid())
    try:
        started = time.perf_counter()
        with pytest.raises(GrammarError, match="could not be compiled"):
            compiler.compile(_string(pattern="^x{0,200000000}$"))
        assert time.perf_counter() - started < 10.0
        assert _peak_rss_kib(_self_pid()) - own_before < 64 * 1024  # the test process did not grow with it
        assert "root ::=" in compiler.compile(_string(maxLength=3))
    finally:
        compiler.close()


def _self_pid() -> int:
    import os

    return os.getpid()


def test_compile_schema_checks_the_bounds_before_the_worker() -> None:
    started = time.perf_counter()
    with pytest.raises(GrammarError, match="200000000"):
        compile_schema(_string(pattern="^x{0,200000000}$"))
    assert time.perf_counter() - started < 0.5


def test_the_documented_bounds_are_the_ones_enforced() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    for bound in ("MAX_REPEAT", "MAX_SCHEMA_DEPTH", "MAX_PROPERTIES", "MAX_OPTIONAL_PROPERTIES", "MAX_GRAMMAR_BYTES"):
        assert f"{getattr(schema_bounds, bound)}" in doc, bound


def _server_rss_kib(guarded: Guarded) -> int:
    assert guarded.proc.proc is not None
    return int(Path(f"/proc/{guarded.proc.proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])


@pytest.mark.parametrize("where", ["response_format", "tools"])
def test_the_200_byte_schema_that_took_the_server_to_4_7_gb_is_a_quick_400(guarded: Guarded, where: str) -> None:
    hostile = _string(pattern="^x{0,200000000}$")
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "json please"}], "max_tokens": 2}
    if where == "response_format":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": hostile}}
    else:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"s": hostile}}}}]
        body["tool_choice"] = "required"
    before = _server_rss_kib(guarded)
    started = time.perf_counter()
    reply = httpx.post(f"{guarded.proc.base_url}/chat/completions", json=body, headers=guarded.auth, timeout=30)
    elapsed = time.perf_counter() - started
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == where and error["type"] == "invalid_request_error"
    assert "{0,200000000}" in error["message"]
    assert elapsed < 5.0
    assert _server_rss_kib(guarded) - before < 32 * 1024
    healthy = httpx.get(f"{guarded.proc.root_url}/health", timeout=5)
    assert healthy.status_code == 200
