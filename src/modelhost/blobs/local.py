"""The directory blob store: each key a file under one root directory (default: files/ in MODELHOST_HOME).

A write goes to a temporary file beside its final name, is flushed and fsynced, then renamed into
place (and the directory fsynced), so a key is either whole or absent, on one host or on a shared
volume that several replicas mount. Whatever ends a write early (the limit, a client that goes
away, a full disk) removes the temporary file. File I/O runs on worker threads in blocks of
`BLOCK` bytes, so neither a large file nor a slow disk holds the event loop.

    store = LocalBlobStore(Path("/var/lib/modelhost/files"))
    written = await store.write("files/file-abc", chunks, limit=512 * 2**20)   # Written(size=…, md5=…)
    async for block in store.read("files/file-abc"): ...
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

from modelhost.blobs.base import BlobMissing, Blocks, BlobStore, Written

BLOCK = 1024 * 1024  # bytes gathered before a write to disk, and read per chunk
# Keys are made by the server ("files/file-…", "uploads/upload_…/part_…"): path segments of safe characters.
_KEY = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-][A-Za-z0-9_\-.]*)*$")
_TEMP_PREFIX = ".partial-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore(BlobStore):
    """Blobs as files under `root` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        assert _KEY.match(key) and ".." not in key.split("/"), f"blob keys are made by the server: {key!r}"
        return self.root / key

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, limit: int) -> Written:
        final = self._path(key)
        await anyio.to_thread.run_sync(lambda: final.parent.mkdir(parents=True, exist_ok=True))
        temp = final.parent / f"{_TEMP_PREFIX}{final.name}.{secrets.token_hex(8)}"
        handle: BinaryIO = await anyio.to_thread.run_sync(lambda: open(temp, "xb"))
        blocks = Blocks(chunks, limit=limit, block_size=BLOCK)
        try:
            async for block in blocks:
                await anyio.to_thread.run_sync(handle.write, block)

            def finish() -> None:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                os.replace(temp, final)
                _fsync_dir(final.parent)

            await anyio.to_thread.run_sync(finish)
        except BaseException:
            with anyio.CancelScope(shield=True):  # a cancelled request still removes what it wrote
                await anyio.to_thread.run_sync(self._discard, handle, temp)
            raise
        return blocks.written()

    @staticmethod
    def _discard(handle: BinaryIO, temp: Path) -> None:
        handle.close()
        temp.unlink(missing_ok=True)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle: BinaryIO = await anyio.to_thread.run_sync(lambda: open(path, "rb"))
        except FileNotFoundError:
            raise BlobMissing(key) from None
        try:
            while True:
                block: bytes = await anyio.to_thread.run_sync(handle.read, BLOCK)
                if not block:
                    return
                yield block
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
