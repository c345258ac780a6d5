"""Files: create (streamed into the blob store), list, retrieve, read back, delete.

A file is written in two steps so that a multipart body may name its `purpose` after its bytes:
`stage_file` streams the bytes into the blob store under a new file's key (counting them against
the size limit as they come: past it, a 413 and nothing kept); `register_file` decides (purpose,
name, a `batch` file's lines, the project's storage) and writes the row, or removes the blob.
`create_file` is both, for callers that know everything first (the batch runner's output files).

A client's file is held to the project's storage before its bytes reach the disk: `reserved_room`
counts the most it can be (the request's Content-Length, else files_max_bytes) in the project's
storage first, refusing at once what does not fit, and `register_file` settles that to the real
size; a file that fails (413, a refused `batch` file, a client gone) gives the reservation back.
Checking only that the project was not already full let N concurrent uploads each write up to
files_max_bytes past the limit.

Database calls run on worker threads; blob calls are the store's own (async, off the event loop).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Principal
from modelhost.blobs import BlobMissing, BlobStore, BlobTooLarge, Written
from modelhost.errors import InvalidRequest
from modelhost.files.batch_input import check_batch_input
from modelhost.files.errors import FileTooLarge, file_not_found, storage_limit_exceeded, storage_unavailable
from modelhost.ids import new_id
from modelhost.organization.common import transaction, unix, unix_now
from modelhost.protocol.common import stored_text
from modelhost.protocol.files import FILE_PURPOSES, MAX_FILENAME, DeletedFile, FileList, FileListQuery, FileObject
from modelhost.store import files as store
from modelhost.store.files import StoredFile

logger = logging.getLogger(__name__)

BATCH_FILE_RETENTION = timedelta(days=30)  # OpenAI: `batch` files expire after 30 days unless told otherwise
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024  # a batch line is a request body: the default max_body_bytes


@dataclass(frozen=True)
class StagedFile:
    """Bytes in the blob store under a new file's key, not yet a file (`register_file` or `discard`)."""

    id: str
    blob_key: str
    written: Written


def file_object(row: StoredFile) -> dict[str, Any]:
    """The OpenAI file object of a row."""
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=unix_now(row.created_at),
        expires_at=unix(row.expires_at),
        filename=row.filename,
        purpose=row.purpose,
        status_details=row.status_details,
    ).model_dump(mode="json")


def check_room(sessions: sessionmaker[Session], owner: Principal, storage_limit: int) -> None:
    """A 400 at once when the project's storage is already full (before a byte of a new file is read)."""
    if storage_limit > 0:
        with sessions() as session:
            used = store.storage_used(session, owner.project_id)
        if used >= storage_limit:
            raise storage_limit_exceeded(storage_limit, used)


@dataclass
class Room:
    """Bytes reserved in a project's storage for a file not yet written; `settled` once the file holds them."""

    project_id: str
    size: int
    settled: bool = False


def _reserve(sessions: sessionmaker[Session], owner: Principal, size: int, storage_limit: int) -> None:
    with transaction(sessions) as session:
        if not store.reserve_storage(session, owner.project_id, size, storage_limit):
            raise storage_limit_exceeded(storage_limit, store.storage_used(session, owner.project_id))


def _release(sessions: sessionmaker[Session], room: Room) -> None:
    with transaction(sessions) as session:
        store.release_storage(session, room.project_id, room.size)


@asynccontextmanager
async def reserved_room(
    sessions: sessionmaker[Session], owner: Principal, size: int, storage_limit: int
) -> AsyncIterator[Room]:
    """`size` bytes counted in the project's storage for the body of the block (a 400 at once if they do
    not fit); unless `register_file` settled them to a file's size, given back when the block ends,
    however it ends (shielded from cancellation: a client gone mid-file)."""
    await anyio.to_thread.run_sync(_reserve, sessions, owner, size, storage_limit)
    room = Room(owner.project_id, size)
    try:
        yield room
    finally:
        if not room.settled:
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(_release, sessions, room)
                except Exception:
                    logger.error("could not give back %d reserved bytes of project %s", room.size, room.project_id, exc_info=True)


async def stage_file(blobs: BlobStore, chunks: AsyncIterable[bytes], *, limit: int) -> StagedFile:
    """Stream `chunks` into the blob store under a new file id: a 413 past `limit` bytes, nothing kept."""
    file_id = new_id("file-")
    key = f"files/{file_id}"
    try:
        written = await blobs.write(key, chunks, limit=limit)
    except BlobTooLarge:
        raise FileTooLarge(limit) from None
    except OSError:
        logger.warning("could not write a file to the blob store", exc_info=True)
        raise storage_unavailable() from None
    return StagedFile(file_id, key, written)


async def discard(blobs: BlobStore, key: str) -> None:
    """Remove a blob no file will hold; a failure is logged (and leaves an orphan blob, never a broken file)."""
    with anyio.CancelScope(shield=True):
        try:
            await blobs.delete(key)
        except Exception:
            logger.warning("could not remove blob %s; it is left in the store", key, exc_info=True)


def _checked_purpose(purpose: str) -> str:
    if purpose not in FILE_PURPOSES:
        raise InvalidRequest(
            f"Invalid value for 'purpose': {purpose[:64]!r} is not one of {', '.join(FILE_PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    return purpose


def _checked_filename(filename: str) -> str:
    try:
        stored_text(filename)
    except ValueError:  # pydantic's error: NUL or an unpaired surrogate
        raise InvalidRequest("The file's name must be valid Unicode without NUL.", param="file", code="invalid_value") from None
    if not filename or len(filename) > MAX_FILENAME:
        raise InvalidRequest(f"The file's name must be 1 to {MAX_FILENAME} characters.", param="file", code="invalid_value")
    return filename


def _insert(
    sessions: sessionmaker[Session], owner: Principal, row: StoredFile, storage_limit: int, room: Room | None
) -> dict[str, Any]:
    with transaction(sessions) as session:
        if room is not None:  # the reservation becomes the file's real size, in the same transaction
            store.release_storage(session, room.project_id, room.size)
        if not store.reserve_storage(session, owner.project_id, row.bytes, storage_limit):
            raise storage_limit_exceeded(storage_limit, store.storage_used(session, owner.project_id))
        session.add(row)
        made = file_object(row)
    if room is not None:
        room.settled = True
    return made


async def register_file(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    owner: Principal,
    staged: StagedFile,
    *,
    purpose: str,
    filename: str,
    expires_at: datetime | None = None,
    storage_limit: int = 0,
    validate: bool = True,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    room: Room | None = None,
) -> dict[str, Any]:
    """Make the staged bytes a file of `owner`'s project; on any refusal the blob is removed.

    `room`: bytes `reserved_room` holds for this file, settled to its size as the row is written."""
    try:
        _checked_purpose(purpose)
        _checked_filename(filename)
        if purpose == "batch" and validate:
            try:
                await check_batch_input(blobs.read(staged.blob_key), max_line_bytes=max_line_bytes)
            except (OSError, BlobMissing):
                logger.warning("could not read back a staged batch file", exc_info=True)
                raise storage_unavailable() from None
        now = datetime.now(timezone.utc)
        if expires_at is None and purpose == "batch":
            expires_at = now + BATCH_FILE_RETENTION
        row = StoredFile(
            id=staged.id,
            organization_id=owner.organization_id,
            project_id=owner.project_id,
            purpose=purpose,
            filename=filename,
            bytes=staged.written.size,
            md5=staged.written.md5,
            status=store.VISIBLE,
            status_details=None,
            blob_key=staged.blob_key,
            created_at=now,
            expires_at=expires_at,
        )
        return await anyio.to_thread.run_sync(_insert, sessions, owner, row, storage_limit, room)
    except BaseException:
        await discard(blobs, staged.blob_key)
        raise


async def create_file(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    owner: Principal,
    *,
    purpose: str,
    filename: str,
    chunks: AsyncIterable[bytes],
    limit: int,
    expires_at: datetime | None = None,
    storage_limit: int = 0,
    validate: bool = True,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> dict[str, Any]:
    """A new file of `owner`'s project holding `chunks` (at most `limit` bytes): its OpenAI file object.

    A `batch` file's lines are checked first (`validate`); the project's files may hold at most
    `storage_limit` bytes (0: no limit). Refused, nothing is kept.
    """
    _checked_purpose(purpose)
    _checked_filename(filename)
    await anyio.to_thread.run_sync(check_room, sessions, owner, storage_limit)
    staged = await stage_file(blobs, chunks, limit=limit)
    return await register_file(
        sessions,
        blobs,
        owner,
        staged,
        purpose=purpose,
        filename=filename,
        expires_at=expires_at,
        storage_limit=storage_limit,
        validate=validate,
        max_line_bytes=max_line_bytes,
    )


def _found(session: Session, owner: Principal, file_id: str) -> StoredFile:
    row = store.get_file(session, owner.organization_id, owner.project_id, file_id)
    if row is None:
        raise file_not_found(file_id)
    return row


def retrieve_file(sessions: sessionmaker[Session], owner: Principal, file_id: str) -> dict[str, Any]:
    """The file object; the same 404 for an unknown id and another project's file."""
    with sessions() as session:
        return file_object(_found(session, owner, file_id))


def list_files(sessions: sessionmaker[Session], owner: Principal, query: FileListQuery) -> dict[str, Any]:
    with transaction(sessions) as session:  # an unknown `after` is a 400 naming it
        page = store.list_files(
            session,
            owner.organization_id,
            owner.project_id,
            purpose=query.purpose,
            limit=query.limit,
            after=query.after,
            descending=query.order == "desc",
        )
        data = [FileObject.model_validate(file_object(row)) for row in page.items]
    listing = FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )
    return listing.model_dump(mode="json")


async def open_content(
    sessions: sessionmaker[Session], blobs: BlobStore, owner: Principal, file_id: str
) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
    """The file object and its bytes in chunks; the 404 (or a store's 503) is raised before anything is sent."""
    row = await anyio.to_thread.run_sync(_row_of, sessions, owner, file_id)
    chunks = blobs.read(row.blob_key)
    try:
        first = await anext(chunks, b"")
    except BlobMissing:
        logger.error("file %s has no blob %s in the store", row.id, row.blob_key)
        raise file_not_found(file_id) from None
    except OSError:
        logger.warning("could not read file %s from the blob store", row.id, exc_info=True)
        raise storage_unavailable() from None

    async def rest() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]  # an async generator

    return file_object(row), rest()


def _row_of(sessions: sessionmaker[Session], owner: Principal, file_id: str) -> StoredFile:
    with sessions() as session:
        return _found(session, owner, file_id)


async def file_content(sessions: sessionmaker[Session], blobs: BlobStore, owner: Principal, file_id: str) -> AsyncIterator[bytes]:
    """The file's bytes in chunks (await it: the 404 comes before the first chunk)."""
    _, chunks = await open_content(sessions, blobs, owner, file_id)
    return chunks


def _mark_deleted(sessions: sessionmaker[Session], owner: Principal, file_id: str) -> StoredFile:
    with transaction(sessions) as session:
        row = _found(session, owner, file_id)
        if not store.mark_deleted(session, row):
            raise file_not_found(file_id)  # a concurrent delete got there first
        return row


async def delete_file(sessions: sessionmaker[Session], blobs: BlobStore, owner: Principal, file_id: str) -> dict[str, Any]:
    """Delete the file: a 404 from now on, its bytes given back to the project; the blob goes now or at the next sweep."""
    row = await anyio.to_thread.run_sync(_mark_deleted, sessions, owner, file_id)
    with anyio.CancelScope(shield=True):
        try:
            await blobs.delete(row.blob_key)
            await anyio.to_thread.run_sync(_remove_row, sessions, row.id)
        except Exception:
            logger.warning("could not remove deleted file %s's blob now; the files sweep will", row.id, exc_info=True)
    return DeletedFile(id=row.id).model_dump(mode="json")


def _remove_row(sessions: sessionmaker[Session], file_id: str) -> None:
    with sessions() as session:
        store.remove_files(session, [file_id])
        session.commit()
