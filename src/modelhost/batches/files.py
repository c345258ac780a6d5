"""The files a batch reads and writes, through the Files API's functions (`modelhost.files`).

`BatchFiles` is the little a batch needs: a file's metadata (404 when the caller may not see it),
its bytes as a stream, and a new file written from a stream. `StoredFiles` is the real thing; tests
of the runner's logic may give a fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Principal
from modelhost.blobs import BlobStore

OUTPUT_PURPOSE = "batch_output"  # OpenAI's purpose for both a batch's output and error files


class BatchFiles(Protocol):
    def retrieve(self, owner: Principal, file_id: str) -> dict[str, Any]:
        """The file object (blocking: call it on a worker thread); `NotFound` if `owner` may not see it."""

    def content(self, owner: Principal, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes in chunks."""

    async def create(
        self, owner: Principal, *, filename: str, chunks: AsyncIterable[bytes], expires_at: datetime | None
    ) -> dict[str, Any]:
        """A new `batch_output` file of `owner`'s project holding `chunks`; an `APIError` if refused (4xx: too
        large or past the project's storage limit; 5xx: the store is down, try again later)."""


class StoredFiles:
    """`BatchFiles` over the Files API's store and blob store.

    A batch's output and error files are the project's files like any other: at most `limit` bytes each
    (files_max_bytes) and counted against the project's `storage_limit` (project_storage_limit_bytes;
    0: none). Past either, `create` raises the Files API's 4xx and the runner fails the batch.
    """

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore, *, limit: int, storage_limit: int = 0) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._limit = limit
        self._storage_limit = storage_limit

    def retrieve(self, owner: Principal, file_id: str) -> dict[str, Any]:
        from modelhost.files import retrieve_file

        return retrieve_file(self._sessions, owner, file_id)

    async def content(self, owner: Principal, file_id: str) -> AsyncIterator[bytes]:
        from modelhost.files import file_content

        async for chunk in await _maybe_awaited(file_content(self._sessions, self._blobs, owner, file_id)):
            yield chunk

    async def create(
        self, owner: Principal, *, filename: str, chunks: AsyncIterable[bytes], expires_at: datetime | None
    ) -> dict[str, Any]:
        from modelhost.files import create_file

        return await create_file(
            self._sessions, self._blobs, owner, purpose=OUTPUT_PURPOSE, filename=filename, chunks=chunks,
            limit=self._limit, storage_limit=self._storage_limit, expires_at=expires_at,
        )


async def _maybe_awaited(value: Any) -> AsyncIterator[bytes]:
    """`file_content` is an async generator or a coroutine answering one (it may check ownership first)."""
    if hasattr(value, "__aiter__"):
        return value  # type: ignore[no-any-return]
    return await value  # type: ignore[no-any-return]
