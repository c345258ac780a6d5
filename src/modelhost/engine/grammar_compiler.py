"""JSON schema → GBNF in worker processes that a runaway compile cannot take the server down with.

The schema's size and shape are bounded first (`schema_bounds.check_schema`, milliseconds), so a
schema within the documented bounds compiles in well under a second. The compile itself still
runs in a separate process with an address-space cap and a wall-clock deadline: if an estimate is
ever wrong, the worker is killed and the request gets a 400, while the server (and its GIL, its
memory, its SIGTERM handling) never notices. Workers are reused between requests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from modelhost.engine.grammar_errors import GrammarCompilerBusy, GrammarError
from modelhost.engine.schema_bounds import check_schema
from modelhost.engine.schema_refs import inline_root_ref

COMPILE_SECONDS = 5.0  # a worker's deadline for one schema (within bounds: < 1 s, measured)
WAIT_SECONDS = 5.0  # how long a request waits for a free worker before it is told to retry (503)
WORKER_MEMORY_BYTES = 256 * 1024 * 1024  # added address space a worker may use for one compile
MAX_GRAMMAR_BYTES = 256 * 1024
MAX_ERROR_CHARS = 300
TENANT_QUEUE = 8  # compiles one organization may have running (one at a time) or waiting; the next is a 503
_WORKER_SCRIPT = Path(__file__).with_name("grammar_worker.py")


def _converter_path() -> str:
    """llama-cpp-python's schema converter, located without importing llama_cpp (no native load)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise GrammarError("The JSON-schema converter (llama-cpp-python) is not installed.")
    return str(Path(next(iter(spec.submodule_search_locations))) / "llama_grammar.py")


class _Worker:
    def __init__(self, converter: str, memory_bytes: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(_WORKER_SCRIPT), converter, str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C to the server's terminal is the server's to handle
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, line: str, deadline: float) -> dict[str, object] | None:
        """The worker's answer, or None if it died or missed the deadline (then it is killed)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        answer: list[str] = []
        reader = threading.Thread(target=lambda: answer.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill()
            return None
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        if reader.is_alive() or not answer or not answer[0]:
            self.kill()
            return None
        try:
            parsed = json.loads(answer[0])
        except ValueError:
            self.kill()
            return None
        if parsed.get("fatal"):
            self.kill()
        return parsed if isinstance(parsed, dict) else None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class GrammarCompiler:
    """A small pool of compile workers, started on first use; thread-safe, blocking (call off the event loop)."""

    def __init__(
        self,
        workers: int = 2,
        *,
        compile_seconds: float = COMPILE_SECONDS,
        wait_seconds: float = WAIT_SECONDS,
        memory_bytes: int = WORKER_MEMORY_BYTES,
    ) -> None:
        self._size = workers
        self._compile_seconds = compile_seconds
        self._wait_seconds = wait_seconds
        self._memory_bytes = memory_bytes
        self._slots = threading.BoundedSemaphore(workers)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._converter: str | None = None
        self._by_tenant: dict[str, int] = {}  # compiles running or waiting, per organization
        self._tenant_locks: dict[str, threading.Lock] = {}

    def compile(self, schema: object, prop_order: list[str] | None = None, *, tenant: str | None = None) -> str:
        """GBNF for values matching `schema` (root rule `root`), or `GrammarError` naming the problem.

        `tenant` (an organization id) compiles one schema at a time, with up to TENANT_QUEUE running
        or waiting; more, or no worker free within the wait, is `GrammarCompilerBusy` (a 503
        `overloaded` with Retry-After): the server's load, not the schema's fault (and a waiting
        request holds a worker thread).
        """
        document = inline_root_ref(check_schema(schema))  # references hoisted: each target one rule
        line = json.dumps({"schema": document, "prop_order": prop_order, "cpu_seconds": self._compile_seconds})
        with self._tenant_turn(tenant):
            return self._compile_line(line)

    @contextlib.contextmanager
    def _tenant_turn(self, tenant: str | None) -> Iterator[None]:
        if tenant is None:
            yield
            return
        with self._lock:
            if self._by_tenant.get(tenant, 0) >= TENANT_QUEUE:
                raise GrammarCompilerBusy("this organization's compiles are all taken", per_organization=True)
            self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + 1
            turn = self._tenant_locks.setdefault(tenant, threading.Lock())
        try:
            if not turn.acquire(timeout=self._wait_seconds):
                raise GrammarCompilerBusy("this organization's earlier compiles took the whole wait", per_organization=True)
            try:
                yield
            finally:
                turn.release()
        finally:
            with self._lock:
                self._by_tenant[tenant] -= 1
                if not self._by_tenant[tenant]:
                    del self._by_tenant[tenant]
                    self._tenant_locks.pop(tenant, None)

    def _compile_line(self, line: str) -> str:
        if not self._slots.acquire(timeout=self._wait_seconds):
            raise GrammarCompilerBusy("no compile worker was free in time", per_organization=False)
        try:
            worker = self._take()
            answer = worker.ask(line, time.monotonic() + self._compile_seconds)
            if answer is None:
                raise GrammarError(
                    f"The schema could not be compiled within {self._compile_seconds:g} s and "
                    f"{self._memory_bytes // (1024 * 1024)} MB; make it smaller."
                )
            self._give_back(worker)
        finally:
            self._slots.release()
        if "error" in answer:
            raise GrammarError(f"The schema could not be compiled: {str(answer['error'])[:MAX_ERROR_CHARS]}")
        grammar = answer.get("grammar")
        if not isinstance(grammar, str):
            raise GrammarError("The schema could not be compiled.")
        if len(grammar) > MAX_GRAMMAR_BYTES:
            raise GrammarError("The schema compiles to a grammar that is too large.")
        return grammar

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise GrammarError("The server is shutting down.")
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                worker.kill()
            if self._converter is None:
                self._converter = _converter_path()
            converter = self._converter
        return _Worker(converter, self._memory_bytes)

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if worker.alive() and not self._closed and len(self._idle) < self._size:
                self._idle.append(worker)
                return
        worker.kill()

    def close(self) -> None:
        """Kill every idle worker; a compile still running finds the pool closed and kills its own."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


_default: GrammarCompiler | None = None
_default_lock = threading.Lock()


def default_compiler() -> GrammarCompiler:
    """The process's compiler (one pool per server process, like its engines)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = GrammarCompiler(workers=max(1, min(2, os.cpu_count() or 1)))
        return _default


def close_default_compiler() -> None:
    with _default_lock:
        if _default is not None:
            _default.close()
