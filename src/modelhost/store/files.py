"""Files, uploads and their parts, and each project's storage in use: tables and queries.

A file row is the metadata of one blob (`blob_key` in the blob store). Every query of a caller's
objects takes the owner (organization, project): another project's id is simply not found. A file
is visible while its `status` is `processed` and its `expires_at` (if any) is in the future; deleting
or expiring it sets `deleted` and gives back its bytes, in one conditional UPDATE, so it is counted
out exactly once; the files sweep (files/sweep.py) then deletes the blob and the row.

`file_storage` holds each project's bytes in use: live files, plus pending uploads as declared
(reserved when the upload is created, handed to the file when it completes, given back when it is
cancelled or expires). `reserve_storage` is a conditional UPDATE (`bytes + n <= limit`), atomic on
SQLite and PostgreSQL, so concurrent uploads on any number of replicas never pass the limit together.
`purge_expired` is the retention sweep's part (store/retention.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, case, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.store.pages import Page, keyset_page
from modelhost.store.schema import Base
from modelhost.store.tenancy import as_utc

VISIBLE = "processed"  # the one status a file shows (OpenAI's `status` is deprecated; ours are all processed)
DELETED = "deleted"  # deleted or expired, its blob not yet removed from the store
PENDING = "pending"
# How long a finished upload's row is kept after its hour (its parts' blobs go at once).
FINISHED_UPLOAD_KEPT = timedelta(days=1)
SWEEP_BATCH = 500  # rows one sweep step takes, so one transaction stays small


class StoredFile(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_owner", "organization_id", "project_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    md5: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_details: Mapped[str | None] = mapped_column(Text)
    blob_key: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)


class Upload(Base):
    __tablename__ = "uploads"
    __table_args__ = (
        Index("ix_uploads_owner", "organization_id", "project_id"),
        Index("ix_uploads_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)  # as declared; reserved against the project's storage
    received: Mapped[int] = mapped_column(BigInteger)  # the parts' bytes so far
    mime_type: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # pending, completed, cancelled, expired
    file_id: Mapped[str | None] = mapped_column(String(64))
    file_expires_seconds: Mapped[int | None] = mapped_column(Integer)  # the file's expires_after, once made
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UploadPart(Base):
    __tablename__ = "upload_parts"
    __table_args__ = (Index("ix_upload_parts_upload", "upload_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    upload_id: Mapped[str] = mapped_column(String(64), ForeignKey("uploads.id", ondelete="CASCADE"))
    bytes: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FileStorage(Base):
    """A project's bytes in use: live files and pending uploads (as declared)."""

    __tablename__ = "file_storage"

    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"), primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


# -- storage -----------------------------------------------------------------------------------


def storage_used(session: Session, project_id: str) -> int:
    used = session.scalar(select(FileStorage.bytes).where(FileStorage.project_id == project_id))
    return int(used or 0)


def reserve_storage(session: Session, project_id: str, size: int, limit: int) -> bool:
    """Count `size` more bytes to the project if that keeps it within `limit` (0: no limit); whether it did."""
    if session.get(FileStorage, project_id) is None:
        try:
            with session.begin_nested():  # a concurrent first upload may insert the row first
                session.add(FileStorage(project_id=project_id, bytes=0))
        except IntegrityError:
            pass
    query = update(FileStorage).where(FileStorage.project_id == project_id)
    if limit > 0:
        query = query.where(FileStorage.bytes + size <= limit)
    return _rowcount(session.execute(query.values(bytes=FileStorage.bytes + size).execution_options(synchronize_session=False))) == 1


def release_storage(session: Session, project_id: str, size: int) -> None:
    session.execute(
        update(FileStorage)
        .where(FileStorage.project_id == project_id)
        .values(bytes=case((FileStorage.bytes > size, FileStorage.bytes - size), else_=0))
        .execution_options(synchronize_session=False)
    )


# -- files -------------------------------------------------------------------------------------


def _live(now: datetime | None = None) -> Any:
    """Files visible now: not deleted, not past their `expires_at` (gone before the sweep gets to them)."""
    moment = as_utc(now or datetime.now(timezone.utc))
    return (StoredFile.status == VISIBLE) & or_(StoredFile.expires_at.is_(None), StoredFile.expires_at > moment)


def get_file(session: Session, organization_id: str, project_id: str, file_id: str) -> StoredFile | None:
    return session.scalars(
        select(StoredFile).where(
            StoredFile.id == file_id,
            StoredFile.organization_id == organization_id,
            StoredFile.project_id == project_id,
            _live(),
        )
    ).first()


def list_files(
    session: Session,
    organization_id: str,
    project_id: str,
    *,
    purpose: str | None,
    limit: int,
    after: str | None,
    descending: bool,
) -> Page[StoredFile]:
    query = select(StoredFile).where(StoredFile.organization_id == organization_id, StoredFile.project_id == project_id, _live())
    if purpose is not None:
        query = query.where(StoredFile.purpose == purpose)
    return keyset_page(session, query, created=StoredFile.created_at, ident=StoredFile.id, limit=limit, after=after, descending=descending)


def mark_deleted(session: Session, row: StoredFile) -> bool:
    """Hide the file and give back its bytes, once (a concurrent delete finds it gone); whether this call did."""
    done = session.execute(
        update(StoredFile)
        .where(StoredFile.id == row.id, StoredFile.status == VISIBLE)
        .values(status=DELETED)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(done) != 1:
        return False
    release_storage(session, row.project_id, row.bytes)
    return True


def deleted_files(session: Session, limit: int = SWEEP_BATCH) -> list[tuple[str, str]]:
    """(id, blob key) of files deleted or expired whose blob the sweep has still to remove."""
    rows = session.execute(select(StoredFile.id, StoredFile.blob_key).where(StoredFile.status == DELETED).limit(limit))
    return [(str(i), str(k)) for i, k in rows]


def remove_files(session: Session, file_ids: Sequence[str]) -> None:
    """Delete the rows of deleted files (their blobs already removed)."""
    session.execute(
        delete(StoredFile).where(StoredFile.id.in_(file_ids), StoredFile.status == DELETED).execution_options(synchronize_session=False)
    )


# -- uploads -----------------------------------------------------------------------------------


def get_upload(session: Session, organization_id: str, project_id: str, upload_id: str) -> Upload | None:
    return session.scalars(
        select(Upload).where(Upload.id == upload_id, Upload.organization_id == organization_id, Upload.project_id == project_id)
    ).first()


def upload_status(upload: Upload, now: datetime) -> str:
    """The status a client sees: a pending upload past its hour is expired, swept or not."""
    expires_at = as_utc(upload.expires_at)
    assert expires_at is not None
    if upload.status == PENDING and expires_at <= as_utc(now):  # type: ignore[operator]
        return "expired"
    return upload.status


def reserve_part(session: Session, upload: Upload, size: int, now: datetime, *, max_parts: int | None = None) -> bool:
    """Count a part's bytes to the pending upload if they fit what it declared (and it has fewer than
    `max_parts` parts); whether they did."""
    wanted = [
        Upload.id == upload.id,
        Upload.status == PENDING,
        Upload.expires_at > as_utc(now),
        Upload.received + size <= Upload.bytes,
    ]
    if max_parts is not None:
        parts = select(func.count()).select_from(UploadPart).where(UploadPart.upload_id == upload.id).scalar_subquery()
        wanted.append(parts < max_parts)
    done = session.execute(
        update(Upload)
        .where(*wanted)
        .values(received=Upload.received + size)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(done) == 1


def parts_of(session: Session, upload_id: str) -> dict[str, UploadPart]:
    return {part.id: part for part in session.scalars(select(UploadPart).where(UploadPart.upload_id == upload_id))}


def finish_upload(session: Session, upload: Upload, status: str, now: datetime, *, file_id: str | None = None) -> bool:
    """Move a pending upload (within its hour) to `status`; whether this call did (not a concurrent one)."""
    done = session.execute(
        update(Upload)
        .where(Upload.id == upload.id, Upload.status == PENDING, Upload.expires_at > as_utc(now))
        .values(status=status, file_id=file_id)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(done) == 1


def finished_parts(session: Session, limit: int = SWEEP_BATCH) -> list[tuple[str, str]]:
    """(id, blob key) of parts of uploads no longer pending: completed (copied into the file), cancelled or expired."""
    rows = session.execute(
        select(UploadPart.id, UploadPart.blob_key)
        .join(Upload, Upload.id == UploadPart.upload_id)
        .where(Upload.status != PENDING)
        .limit(limit)
    )
    return [(str(i), str(k)) for i, k in rows]


def remove_parts(session: Session, part_ids: Sequence[str]) -> None:
    session.execute(delete(UploadPart).where(UploadPart.id.in_(part_ids)).execution_options(synchronize_session=False))


# -- expiry ------------------------------------------------------------------------------------


def purge_expired(session: Session, now: datetime) -> int:
    """Files past their `expires_at` are deleted (bytes given back, blobs left to the files sweep); uploads still
    pending past their hour become `expired` (their reservation given back); finished uploads' rows a day on go.
    How many files and uploads expired."""
    moment = as_utc(now)
    expired = 0
    files = session.scalars(
        select(StoredFile).where(StoredFile.status == VISIBLE, StoredFile.expires_at <= moment).limit(SWEEP_BATCH)
    ).all()
    for row in files:
        expired += mark_deleted(session, row)
    uploads = session.scalars(select(Upload).where(Upload.status == PENDING, Upload.expires_at <= moment).limit(SWEEP_BATCH)).all()
    for upload in uploads:
        done = session.execute(
            update(Upload)
            .where(Upload.id == upload.id, Upload.status == PENDING)
            .values(status="expired")
            .execution_options(synchronize_session=False)
        )
        if _rowcount(done) == 1:
            release_storage(session, upload.project_id, upload.bytes)
            expired += 1
    assert moment is not None
    no_parts = ~select(UploadPart.id).where(UploadPart.upload_id == Upload.id).exists()  # their blobs are gone first
    session.execute(
        delete(Upload)
        .where(Upload.status != PENDING, Upload.expires_at <= moment - FINISHED_UPLOAD_KEPT, no_parts)
        .execution_options(synchronize_session=False)
    )
    return expired
