"""Uploads: a file sent as parts (each its own request, in any order), assembled when completed.

An upload declares its size; those bytes are reserved against the project's storage when it is
created (so pending uploads cannot fill a disk past the limit), handed to the file when it
completes and given back when it is cancelled or expires (one hour after creation; the retention
sweep marks it, the files sweep removes its parts' blobs). Each part is streamed into the blob
store; its bytes are counted against what the upload declared with a conditional UPDATE, so parts
sent at once never add up to more. Completing names the parts in the file's order: they must be
this upload's, each once, adding up to the declared size; the file is streamed from them into a
new blob, its MD5 checked against the client's, a `batch` file's lines checked, and only then the
upload becomes `completed` and the file visible (one transaction).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Principal
from modelhost.blobs import BlobMissing, BlobStore, BlobTooLarge
from modelhost.errors import InvalidRequest
from modelhost.files.batch_input import check_batch_input
from modelhost.files.errors import FileTooLarge, storage_limit_exceeded, storage_unavailable, upload_not_found
from modelhost.files.objects import BATCH_FILE_RETENTION, DEFAULT_MAX_LINE_BYTES, discard, file_object
from modelhost.ids import new_id
from modelhost.organization.common import transaction, unix_now
from modelhost.protocol.files import MAX_PARTS, CompleteUpload, CreateUpload, UploadObject, UploadPartObject
from modelhost.store import files as store
from modelhost.store.files import StoredFile, Upload, UploadPart

logger = logging.getLogger(__name__)

UPLOAD_LIFETIME = timedelta(hours=1)  # as OpenAI's: an upload not completed within the hour expires
MAX_PART_BYTES = 64 * 1024 * 1024  # as OpenAI's


def upload_object(upload: Upload, now: datetime, file: dict[str, Any] | None = None) -> dict[str, Any]:
    return UploadObject(
        id=upload.id,
        bytes=upload.bytes,
        created_at=unix_now(upload.created_at),
        filename=upload.filename,
        purpose=upload.purpose,
        status=store.upload_status(upload, now),
        expires_at=unix_now(upload.expires_at),
        file=file,
    ).model_dump(mode="json")


def _found(session: Session, owner: Principal, upload_id: str) -> Upload:
    upload = store.get_upload(session, owner.organization_id, owner.project_id, upload_id)
    if upload is None:
        raise upload_not_found(upload_id)
    return upload


def _pending(upload: Upload, now: datetime) -> Upload:
    status = store.upload_status(upload, now)
    if status != store.PENDING:
        raise InvalidRequest(f"Upload {upload.id} is already {status}.", param="upload_id", code="upload_not_pending")
    return upload


def create_upload(
    sessions: sessionmaker[Session],
    owner: Principal,
    body: CreateUpload,
    *,
    max_bytes: int,
    storage_limit: int = 0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A pending upload of `body.bytes` (at most `max_bytes`), reserved against the project's storage."""
    now = now or datetime.now(timezone.utc)
    if body.bytes > max_bytes:
        raise InvalidRequest(f"An upload may be at most {max_bytes} bytes (the largest file this server takes).", param="bytes", code="invalid_value")
    with transaction(sessions) as session:
        if not store.reserve_storage(session, owner.project_id, body.bytes, storage_limit):
            raise storage_limit_exceeded(storage_limit, store.storage_used(session, owner.project_id))
        upload = Upload(
            id=new_id("upload_"),
            organization_id=owner.organization_id,
            project_id=owner.project_id,
            purpose=body.purpose,
            filename=body.filename,
            bytes=body.bytes,
            received=0,
            mime_type=body.mime_type,
            status=store.PENDING,
            file_id=None,
            file_expires_seconds=body.expires_after.seconds if body.expires_after else None,
            created_at=now,
            expires_at=now + UPLOAD_LIFETIME,
        )
        session.add(upload)
        return upload_object(upload, now)


def _pending_upload(sessions: sessionmaker[Session], owner: Principal, upload_id: str) -> Upload:
    with sessions() as session:
        return _pending(_found(session, owner, upload_id), datetime.now(timezone.utc))


def _add_part_row(sessions: sessionmaker[Session], upload: Upload, part: UploadPart) -> bool:
    with transaction(sessions) as session:
        if not store.reserve_part(session, upload, part.bytes, part.created_at, max_parts=MAX_PARTS):
            return False
        session.add(part)
        return True


async def add_part(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    owner: Principal,
    upload_id: str,
    chunks: AsyncIterable[bytes],
    *,
    part_limit: int = MAX_PART_BYTES,
) -> dict[str, Any]:
    """Store one part of a pending upload (at most `part_limit` bytes and what the upload still lacks)."""
    upload = await anyio.to_thread.run_sync(_pending_upload, sessions, owner, upload_id)
    remaining = upload.bytes - upload.received
    part_id = new_id("part_")
    key = f"uploads/{upload.id}/{part_id}"
    try:
        written = await blobs.write(key, chunks, limit=min(part_limit, remaining))
    except BlobTooLarge:
        if part_limit <= remaining:
            raise FileTooLarge(part_limit, what="Part", param="data") from None
        raise _over_declared(upload) from None
    except OSError:
        logger.warning("could not write an upload part to the blob store", exc_info=True)
        raise storage_unavailable() from None
    try:
        if written.size == 0:  # never needed (an upload of 0 bytes completes with no part), and free to repeat
            raise InvalidRequest("A part must hold at least one byte.", param="data", code="invalid_value")
        now = datetime.now(timezone.utc)
        part = UploadPart(id=part_id, upload_id=upload.id, bytes=written.size, blob_key=key, created_at=now)
        if not await anyio.to_thread.run_sync(_add_part_row, sessions, upload, part):
            again = await anyio.to_thread.run_sync(_pending_upload, sessions, owner, upload_id)  # expired or finished meanwhile?
            if again.received + part.bytes <= again.bytes:  # the bytes fit: what refused it was the part count
                raise InvalidRequest(
                    f"Upload {upload.id} has {MAX_PARTS} parts already, the most one completion may name.",
                    param="data",
                    code="too_many_parts",
                )
            raise _over_declared(again)
    except BaseException:
        await discard(blobs, key)
        raise
    return UploadPartObject(id=part_id, created_at=unix_now(now), upload_id=upload.id).model_dump(mode="json")


def _over_declared(upload: Upload) -> InvalidRequest:
    return InvalidRequest(
        f"The parts of upload {upload.id} would add up to more than the {upload.bytes} bytes it was created with.",
        param="data",
        code="upload_too_large",
    )


def _ordered_parts(sessions: sessionmaker[Session], owner: Principal, upload_id: str, part_ids: Sequence[str]) -> tuple[Upload, list[UploadPart]]:
    """The pending upload and its parts in the order named: each its own, each once, adding up to its size."""
    with sessions() as session:
        upload = _pending(_found(session, owner, upload_id), datetime.now(timezone.utc))
        parts = store.parts_of(session, upload.id)
    ordered: list[UploadPart] = []
    named: set[str] = set()
    for i, part_id in enumerate(part_ids):
        if part_id in named:
            raise InvalidRequest(f"Part {part_id} is named twice.", param=f"part_ids[{i}]", code="invalid_value")
        if part_id not in parts:
            raise InvalidRequest(f"Upload {upload.id} has no part {part_id}.", param=f"part_ids[{i}]", code="invalid_value")
        named.add(part_id)
        ordered.append(parts[part_id])
    total = sum(part.bytes for part in ordered)
    if total != upload.bytes:
        raise InvalidRequest(
            f"The parts named add up to {total} bytes; upload {upload.id} was created with {upload.bytes}.",
            param="part_ids",
            code="invalid_value",
        )
    return upload, ordered


async def _concatenated(blobs: BlobStore, parts: Sequence[UploadPart]) -> AsyncIterator[bytes]:
    for part in parts:
        async for chunk in blobs.read(part.blob_key):
            yield chunk


def _complete(sessions: sessionmaker[Session], upload: Upload, row: StoredFile) -> bool:
    with transaction(sessions) as session:
        if not store.finish_upload(session, upload, "completed", row.created_at, file_id=row.id):
            return False
        session.add(row)  # the upload's reserved bytes are the file's now: storage in use is unchanged
        return True


async def complete_upload(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    owner: Principal,
    upload_id: str,
    body: CompleteUpload,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> dict[str, Any]:
    """The completed upload with its new file: the parts in `body.part_ids` order, checked against `body.md5`."""
    upload, parts = await anyio.to_thread.run_sync(_ordered_parts, sessions, owner, upload_id, body.part_ids)
    file_id = new_id("file-")
    key = f"files/{file_id}"
    try:
        written = await blobs.write(key, _concatenated(blobs, parts), limit=upload.bytes)
    except (OSError, BlobMissing, BlobTooLarge):  # a part's blob vanished or changed: the store is not what the rows say
        logger.warning("could not assemble upload %s", upload.id, exc_info=True)
        raise storage_unavailable() from None
    try:
        if body.md5 is not None and body.md5.lower() != written.md5:
            raise InvalidRequest(
                f"The MD5 of the parts named is {written.md5}, not {body.md5}.", param="md5", code="md5_mismatch"
            )
        if upload.purpose == "batch":
            await check_batch_input(blobs.read(key), max_line_bytes=max_line_bytes)
        now = datetime.now(timezone.utc)
        if upload.file_expires_seconds is not None:
            expires_at: datetime | None = now + timedelta(seconds=upload.file_expires_seconds)
        else:
            expires_at = now + BATCH_FILE_RETENTION if upload.purpose == "batch" else None
        row = StoredFile(
            id=file_id,
            organization_id=upload.organization_id,
            project_id=upload.project_id,
            purpose=upload.purpose,
            filename=upload.filename,
            bytes=written.size,
            md5=written.md5,
            status=store.VISIBLE,
            status_details=None,
            blob_key=key,
            created_at=now,
            expires_at=expires_at,
        )
        if not await anyio.to_thread.run_sync(_complete, sessions, upload, row):
            await anyio.to_thread.run_sync(_pending_upload, sessions, owner, upload_id)  # says what it became instead
            raise InvalidRequest(f"Upload {upload.id} changed while it was completed; retry.", param="upload_id")
    except BaseException:
        await discard(blobs, key)
        raise
    upload.status = "completed"
    await _drop_parts(sessions, blobs, parts)
    return upload_object(upload, now, file_object(row))


def _cancel(sessions: sessionmaker[Session], owner: Principal, upload_id: str) -> tuple[Upload, list[UploadPart]]:
    now = datetime.now(timezone.utc)
    with transaction(sessions) as session:
        upload = _pending(_found(session, owner, upload_id), now)
        if not store.finish_upload(session, upload, "cancelled", now):
            raise InvalidRequest(f"Upload {upload.id} is no longer pending.", param="upload_id", code="upload_not_pending")
        store.release_storage(session, upload.project_id, upload.bytes)
        upload.status = "cancelled"
        return upload, list(store.parts_of(session, upload.id).values())


async def cancel_upload(sessions: sessionmaker[Session], blobs: BlobStore, owner: Principal, upload_id: str) -> dict[str, Any]:
    """Cancel a pending upload: no more parts, its reservation given back, its parts' blobs removed."""
    upload, parts = await anyio.to_thread.run_sync(_cancel, sessions, owner, upload_id)
    await _drop_parts(sessions, blobs, parts)
    return upload_object(upload, datetime.now(timezone.utc))


async def _drop_parts(sessions: sessionmaker[Session], blobs: BlobStore, parts: Sequence[UploadPart]) -> None:
    """Remove parts no longer needed now; what fails here the files sweep removes later."""
    with anyio.CancelScope(shield=True):
        try:
            for part in parts:
                await blobs.delete(part.blob_key)
            await anyio.to_thread.run_sync(_remove_parts, sessions, [part.id for part in parts])
        except Exception:
            logger.warning("could not remove finished upload parts now; the files sweep will", exc_info=True)


def _remove_parts(sessions: sessionmaker[Session], part_ids: list[str]) -> None:
    with sessions() as session:
        store.remove_parts(session, part_ids)
        session.commit()
