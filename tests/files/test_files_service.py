"""The Files API's functions (modelhost.files) on SQLite and PostgreSQL with the directory blob store:
the storage limit under concurrent uploads, the functions the batch runner calls, deletion and expiry
with the files sweep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from store.databases import Database

from modelhost import files
from modelhost.auth import Principal
from modelhost.blobs.local import LocalBlobStore
from modelhost.errors import APIError, InvalidRequest, NotFound
from modelhost.organization import bootstrap
from modelhost.store import files as store
from modelhost.store import retention
from modelhost.store.tenancy import create_project


@pytest.fixture
def owner(database: Database) -> Principal:
    first = bootstrap.bootstrap(database.sessions)
    return Principal(first.organization_id, first.project_id, "user-test", "key_test", "project")


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "files")


def on_disk(blobs: LocalBlobStore) -> set[str]:
    return {str(p.relative_to(blobs.root)) for p in blobs.root.rglob("*") if p.is_file()} if blobs.root.exists() else set()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)  # let the other uploads interleave
        yield part


def test_concurrent_uploads_never_pass_the_projects_storage_limit(database: Database, owner: Principal, blobs: LocalBlobStore) -> None:
    async def upload(i: int) -> dict[str, object] | APIError:
        try:
            return await files.create_file(
                database.sessions, blobs, owner, purpose="user_data", filename=f"{i}.bin",
                chunks=chunks(b"x" * 50, b"y" * 50), limit=1000, storage_limit=450,
            )
        except InvalidRequest as refused:
            return refused

    async def body() -> list[dict[str, object] | APIError]:
        return await asyncio.gather(*(upload(i) for i in range(8)))

    results = asyncio.run(body())
    made = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, APIError)]
    assert len(made) == 4 and all(r.code == "storage_limit_exceeded" for r in refused)
    with database.sessions() as session:
        assert store.storage_used(session, owner.project_id) == 400
    assert on_disk(blobs) == {f"files/{m['id']}" for m in made}  # the refused uploads' blobs are gone


def test_what_the_batch_runner_calls(database: Database, owner: Principal, blobs: LocalBlobStore) -> None:
    first = bootstrap.bootstrap(database.sessions)
    with database.sessions() as session:
        sibling = create_project(session, first.organization_id, "Sibling")
        session.commit()
    stranger = Principal(first.organization_id, sibling.id, "user-test", "key_other", "project")

    async def body() -> None:
        expires = datetime.now(timezone.utc) + timedelta(days=1)
        made = await files.create_file(
            database.sessions, blobs, owner, purpose="batch_output", filename="batch_out.jsonl",
            chunks=chunks(b'{"id": 1}\n', b'{"id": 2}\n'), limit=1000, expires_at=expires,
        )
        assert made["purpose"] == "batch_output" and made["bytes"] == 20 and made["expires_at"] == int(expires.timestamp())
        assert files.retrieve_file(database.sessions, owner, made["id"]) == made
        content = await files.file_content(database.sessions, blobs, owner, made["id"])
        assert b"".join([c async for c in content]) == b'{"id": 1}\n{"id": 2}\n'
        with pytest.raises(NotFound):
            files.retrieve_file(database.sessions, stranger, made["id"])
        with pytest.raises(NotFound):  # raised by the await, before any chunk
            await files.file_content(database.sessions, blobs, stranger, made["id"])
        with pytest.raises(InvalidRequest) as bad:
            await files.create_file(database.sessions, blobs, owner, purpose="outputs", filename="x", chunks=chunks(b"x"), limit=10)
        assert bad.value.param == "purpose"
        with pytest.raises(files.FileTooLarge):
            await files.create_file(database.sessions, blobs, owner, purpose="batch_output", filename="x", chunks=chunks(b"x" * 11), limit=10)

    asyncio.run(body())
    assert len(on_disk(blobs)) == 1


def test_deleted_and_expired_files_give_back_their_bytes_and_lose_their_blobs(database: Database, owner: Principal, blobs: LocalBlobStore) -> None:
    async def make(name: str, expires_at: datetime | None = None) -> str:
        made = await files.create_file(
            database.sessions, blobs, owner, purpose="user_data", filename=name, chunks=chunks(b"z" * 10), limit=100, expires_at=expires_at
        )
        return str(made["id"])

    async def body() -> None:
        kept = await make("kept")
        gone = await make("gone")
        soon = await make("soon", datetime.now(timezone.utc) + timedelta(hours=1))
        results = await asyncio.gather(
            files.delete_file(database.sessions, blobs, owner, gone),
            files.delete_file(database.sessions, blobs, owner, gone),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["NotFound", "dict"]  # deleted once, counted out once
        with database.sessions() as session:
            assert store.storage_used(session, owner.project_id) == 20
        assert retention.purge_expired(database.sessions, datetime.now(timezone.utc) + timedelta(hours=2))["files"] == 1
        with pytest.raises(NotFound):
            files.retrieve_file(database.sessions, owner, soon)
        with database.sessions() as session:
            assert store.storage_used(session, owner.project_id) == 10
        assert f"files/{soon}" in on_disk(blobs)  # marked; the bytes go with the files sweep
        assert await files.sweep_blobs(database.sessions, blobs) == {"files": 1, "upload_parts": 0}
        assert on_disk(blobs) == {f"files/{kept}"}
        assert await files.sweep_blobs(database.sessions, blobs) == {"files": 0, "upload_parts": 0}

    asyncio.run(body())
