"""A modelhost app in this process on a loopback port, for batch tests that talk HTTP through the SDK.

Models are scripted (`ScriptedEngine` for chat, completions and responses; a constant embedder),
the store is SQLite in the test's folder, there are keys of two projects, and the batch runner's
clock is a `MovableClock` the test moves. `fake_files=True` gives the runner an in-memory `MemoryFiles`
instead of the Files API, for tests of the runner's own logic.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import openai
import uvicorn

from modelhost.api import create_app
from modelhost.api.server import uvicorn_config
from modelhost.auth import Principal
from modelhost.batches.runner import BatchRunner
from modelhost.config import Settings
from modelhost.engine import ModelRegistry, ServedModel
from modelhost.errors import NotFound
from modelhost.ids import new_id
from modelhost.organization import operations
from serverproc import free_port
from support.fake_engine import ScriptedEngine

CHAT_MODEL, EMBEDDING_MODEL = "scripted", "scripted-embedder"


class MovableClock:
    """Now, plus however far the test has moved it."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def move(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


class ConstantEmbedder:
    """Just enough of an embedder: a byte is a token, every vector the same unit vector."""

    model_id = EMBEDDING_MODEL
    dimensions = 4
    max_input_tokens = 512
    vocab_size = 256

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    def frame(self, tokens: Sequence[int]) -> list[int]:
        return list(tokens)

    async def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        return np.full((len(sequences), self.dimensions), 0.5, dtype=np.float32)

    def state(self) -> dict[str, object]:
        return {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@dataclass
class MemoryFiles:
    """`BatchFiles` in memory: files of a project, by id."""

    files: dict[str, tuple[str, str, dict[str, Any], bytes]] = field(default_factory=dict)

    def add(self, owner: Principal, content: bytes, *, purpose: str = "batch") -> str:
        file_id = new_id("file-")
        meta = {"id": file_id, "object": "file", "purpose": purpose, "bytes": len(content), "filename": "input.jsonl"}
        self.files[file_id] = (owner.organization_id, owner.project_id, meta, content)
        return file_id

    def retrieve(self, owner: Principal, file_id: str) -> dict[str, Any]:
        found = self.files.get(file_id)
        if found is None or found[:2] != (owner.organization_id, owner.project_id):
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return found[2]

    async def content(self, owner: Principal, file_id: str) -> AsyncIterator[bytes]:
        data = self.files[file_id][3] if file_id in self.files else None
        if data is None:
            raise NotFound(f"No such File object: {file_id}")
        self.retrieve(owner, file_id)
        for start in range(0, len(data), 7):  # small chunks: lines cross chunk boundaries
            if file_id not in self.files:
                raise NotFound(f"No such File object: {file_id}")  # deleted while being read
            yield data[start : start + 7]

    async def create(self, owner: Principal, *, filename: str, chunks: AsyncIterable[bytes], expires_at: datetime | None) -> dict[str, Any]:
        data = b"".join([chunk async for chunk in chunks])
        file_id = self.add(owner, data, purpose="batch_output")
        self.files[file_id][2]["expires_at"] = expires_at
        return self.files[file_id][2]

    def read(self, file_id: str) -> bytes:
        return self.files[file_id][3]


@dataclass(frozen=True)
class Key:
    secret: str
    organization: str
    project: str

    @property
    def principal(self) -> Principal:
        return Principal(self.organization, self.project, "", "", "project")


@dataclass
class Served:
    app: Any
    base_url: str
    engine: ScriptedEngine
    clock: MovableClock
    a: Key  # the default project's key
    b: Key  # another project's, same organization
    files: MemoryFiles | None
    loop: Any  # the server's event loop (asyncio.run_coroutine_threadsafe)

    @property
    def runner(self) -> BatchRunner:
        return self.app.state.batch_runner  # type: ignore[no-any-return]

    @property
    def sessions(self) -> Any:
        return self.app.state.modelhost.sessions

    def client(self, key: Key | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=(key or self.a).secret, max_retries=0, timeout=30)

    def wait(self, client: openai.OpenAI, batch_id: str, until: Callable[[Any], bool], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            batch = client.batches.retrieve(batch_id)
            if until(batch):
                return batch
            assert time.monotonic() < deadline, f"batch never got there: {batch}"
            time.sleep(0.05)

    def finished(self, client: openai.OpenAI, batch_id: str, timeout: float = 20.0) -> Any:
        ends = ("completed", "failed", "expired", "cancelled")
        return self.wait(client, batch_id, lambda b: b.status in ends, timeout)


def registry(engine: ScriptedEngine) -> ModelRegistry:
    return ModelRegistry(
        [
            ServedModel(id=CHAT_MODEL, created=0, owned_by="tests", engine=engine, fingerprint="fp_scripted"),  # type: ignore[arg-type]
            ServedModel(id=EMBEDDING_MODEL, created=0, owned_by="tests", engine=None, fingerprint="fp_embed", embedder=ConstantEmbedder()),  # type: ignore[arg-type]
        ]
    )


@contextlib.contextmanager
def served(tmp_path: Path, *, engine: ScriptedEngine | None = None, fake_files: bool = False, **settings: Any) -> Iterator[Served]:
    engine = engine or ScriptedEngine(context_length=4096)
    port = free_port()
    config = Settings(
        home=tmp_path,
        port=port,
        batch_poll_seconds=0.1,
        batch_lease_seconds=2,
        embedding_model_enabled=False,
        **settings,
    )
    app = create_app(config, registry_factory=lambda _: registry(engine))
    server = uvicorn.Server(uvicorn_config(app, config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        state = app.state.modelhost
        first = operations.create_key(state.sessions)
        organization = str(first["organization"])
        other = operations.create_project(state.sessions, organization, "other")
        second = operations.create_key(state.sessions, project=other.id)
        clock = MovableClock()
        app.state.batch_runner.clock = clock
        files = None
        if fake_files:
            files = MemoryFiles()
            app.state.batch_runner.files = files
        yield Served(
            app,
            f"http://127.0.0.1:{port}/v1",
            engine,
            clock,
            Key(str(first["secret"]), organization, str(first["project"])),
            Key(str(second["secret"]), organization, other.id),
            files,
            server.servers[0].get_loop(),
        )
    finally:
        server.should_exit = True
        thread.join(30)


def jsonl(lines: Sequence[dict[str, Any]]) -> bytes:
    import json

    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(custom_id: str, content: str = "Hi", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}], **body},
    }
