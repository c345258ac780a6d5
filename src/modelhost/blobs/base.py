"""The blob store: where the bytes of files and upload parts live, behind one small interface.

Metadata (who owns a file, its purpose, its size) is in the database like everything else; a blob
is only bytes under a key. Bytes are streamed in and out in chunks and never held whole in memory.
`write` counts what it has written and stops past `limit`: it raises `BlobTooLarge` having removed
what it had written, so a refused upload leaves nothing behind. A key is written once (a new file
gets a new key) and is either whole or absent: a write that fails leaves no blob.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Written:
    """What a write stored: its size in bytes and the MD5 of its content (hex)."""

    size: int
    md5: str


class BlobTooLarge(Exception):
    """The bytes went past the write's limit; nothing was kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


class BlobMissing(Exception):
    """No blob under this key (deleted, or never written whole)."""


class Blocks:
    """`chunks` regrouped into blocks of at least `block_size` bytes (the last one may be smaller),
    counted and hashed as they pass: `BlobTooLarge` as soon as they go past `limit`, before that
    chunk is stored. What every store's `write` reads its input through; `written()` once it ends."""

    def __init__(self, chunks: AsyncIterable[bytes], *, limit: int, block_size: int) -> None:
        self._chunks, self._limit, self._block_size = chunks, limit, block_size
        self._digest = hashlib.md5(usedforsecurity=False)
        self._size = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in self._chunks:
            self._size += len(chunk)
            if self._size > self._limit:
                raise BlobTooLarge(self._limit)
            self._digest.update(chunk)
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= self._block_size:
                yield b"".join(pending)
                pending, pending_size = [], 0
        if pending_size:
            yield b"".join(pending)

    def written(self) -> Written:
        return Written(size=self._size, md5=self._digest.hexdigest())


class BlobStore(abc.ABC):
    @abc.abstractmethod
    async def write(self, key: str, chunks: AsyncIterable[bytes], *, limit: int) -> Written:
        """Store `chunks` under `key`, at most `limit` bytes (else `BlobTooLarge`, nothing kept)."""

    @abc.abstractmethod
    def read(self, key: str) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks; `BlobMissing` (on first iteration) if there is none."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the blob; removing one that is not there is not an error."""

    async def close(self) -> None:
        """Release connections (the S3 client's); the directory store has none."""
