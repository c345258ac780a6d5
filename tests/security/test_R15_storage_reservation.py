"""R15: `POST /v1/files` holds a project's storage limit on disk, not only in its counter.

The route checked only that the project was not already full, then wrote up to files_max_bytes to
the blob store before the storage reservation: N concurrent uploads put N × files_max_bytes on disk
past the limit (each refused afterwards, but only once written). Now the most a file can be (the
request's Content-Length, else files_max_bytes) is reserved before a byte is read, and settled to the
real size (or given back when the upload fails)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai

from batches.harness import Served, served
from modelhost.blobs import BlobStore, Written
from modelhost.store import files as store

STORAGE = 100_000
MAX_FILE = 64_000


class CountingBlobs(BlobStore):
    """A blob store that counts the bytes it holds, those being written included, and the most it ever held."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.sizes: dict[str, int] = {}
        self.held = 0
        self.peak = 0
        self.lock = threading.Lock()

    def _add(self, key: str, n: int) -> None:
        with self.lock:
            self.sizes[key] = self.sizes.get(key, 0) + n
            self.held += n
            self.peak = max(self.peak, self.held)

    def _drop(self, key: str) -> None:
        with self.lock:
            self.held -= self.sizes.pop(key, 0)

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, limit: int) -> Written:
        async def counted() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                self._add(key, len(chunk))
                await asyncio.sleep(0.01)  # slow, so that concurrent uploads overlap on disk
                yield chunk

        try:
            return await self.inner.write(key, counted(), limit=limit)
        except BaseException:
            self._drop(key)  # a failed write keeps nothing
            raise

    def read(self, key: str) -> AsyncIterator[bytes]:
        return self.inner.read(key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)
        self._drop(key)


def _counting(world: Served) -> CountingBlobs:
    state = world.app.state.modelhost
    state.blobs = CountingBlobs(state.blobs)
    return state.blobs  # type: ignore[no-any-return]


def _used(world: Served) -> int:
    with world.sessions() as session:
        return store.storage_used(session, world.a.project)


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_concurrent_uploads_never_put_more_than_the_limit_on_disk(tmp_path: Path) -> None:
    with served(tmp_path, project_storage_limit_bytes=STORAGE, files_max_bytes=MAX_FILE) as world:
        blobs = _counting(world)
        client = world.client()
        results: list[Any] = []

        def upload(i: int) -> None:
            try:
                results.append(client.files.create(file=(f"{i}.bin", b"x" * 30_000), purpose="user_data"))
            except openai.APIStatusError as exc:
                results.append(exc)

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        made = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(made) + len(refused) == 8
        assert 1 <= len(made) <= 3, results
        assert all(r.status_code == 400 and r.code == "storage_limit_exceeded" for r in refused), refused
        assert blobs.peak <= STORAGE, f"{blobs.peak} bytes on disk at once past a limit of {STORAGE}"
        assert _used(world) == 30_000 * len(made) == blobs.held  # reservations settled to the real sizes


def test_a_failed_upload_gives_its_reservation_back(tmp_path: Path) -> None:
    with served(tmp_path, project_storage_limit_bytes=STORAGE, files_max_bytes=MAX_FILE) as world:
        blobs = _counting(world)
        client = world.client()
        kept = client.files.create(file=("kept.bin", b"k" * 1000), purpose="user_data")
        assert _used(world) == 1000
        too_large = httpx.post(
            f"{world.base_url}/files",
            headers={"Authorization": f"Bearer {world.a.secret}"},
            files={"file": ("big.bin", b"b" * (MAX_FILE + 1))},
            data={"purpose": "user_data"},
        )
        assert too_large.status_code == 413
        bad_batch = httpx.post(
            f"{world.base_url}/files",
            headers={"Authorization": f"Bearer {world.a.secret}"},
            files={"file": ("in.jsonl", b"not json\n")},
            data={"purpose": "batch"},
        )
        assert bad_batch.status_code == 400
        no_purpose = httpx.post(
            f"{world.base_url}/files", headers={"Authorization": f"Bearer {world.a.secret}"}, files={"file": ("x.bin", b"x")}
        )
        assert no_purpose.status_code == 400
        assert _used(world) == 1000

        # A client gone mid-file: what it declared is reserved, then given back.
        host, port = world.base_url.split("//")[1].split("/")[0].split(":")
        head = (
            f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {world.a.secret}\r\n"
            "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 60000\r\n\r\n"
        ).encode()
        part = b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="gone.bin"\r\n\r\n'
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(head + part + b"g" * 20_000)
            _eventually(lambda: _used(world) == 1000 + 60_000, "the declared length reserved")
        _eventually(lambda: _used(world) == 1000, "the reservation given back when the client went")

        # Without a Content-Length the reservation is files_max_bytes: it must fit, and is settled to the real size.
        def body() -> Any:
            yield b"--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n"
            yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.bin\"\r\n\r\n" + b"c" * 500 + b"\r\n--B--\r\n"

        chunked = httpx.post(
            f"{world.base_url}/files",
            headers={"Authorization": f"Bearer {world.a.secret}", "Content-Type": "multipart/form-data; boundary=B"},
            content=body(),
        )
        assert chunked.status_code == 200, chunked.text
        assert chunked.json()["bytes"] == 500
        assert _used(world) == 1500
        client.files.create(file=("fill.bin", b"f" * 60_000), purpose="user_data")  # 61,500 used: no room for files_max_bytes more
        unknown_length = httpx.post(
            f"{world.base_url}/files",
            headers={"Authorization": f"Bearer {world.a.secret}", "Content-Type": "multipart/form-data; boundary=B"},
            content=body(),
        )
        assert unknown_length.status_code == 400 and unknown_length.json()["error"]["code"] == "storage_limit_exceeded"
        assert _used(world) == 61_500
        client.files.delete(kept.id)
        assert _used(world) == 60_500
        assert blobs.held == 60_500
