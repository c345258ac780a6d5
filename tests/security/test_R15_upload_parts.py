"""R15: an upload's parts are bounded in number. Empty parts were taken without end (each a row and a
blob, free for the client: they added nothing to `received`), and 1-byte parts up to the declared size
(512 MiB of rows); a completion may name at most MAX_PARTS, so no upload needs more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from store.databases import Database

from modelhost import files
from modelhost.auth import Principal
from modelhost.blobs.local import LocalBlobStore
from modelhost.errors import InvalidRequest
from modelhost.files import uploads
from modelhost.organization import bootstrap
from modelhost.protocol.files import CreateUpload
from modelhost.store import files as store


async def _data(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


def _upload(database: Database, owner: Principal, size: int) -> str:
    body = CreateUpload.model_validate({"filename": "a.txt", "purpose": "user_data", "bytes": size, "mime_type": "text/plain"})
    return str(files.create_upload(database.sessions, owner, body, max_bytes=1 << 20)["id"])


def _parts(database: Database, upload_id: str) -> int:
    with database.sessions() as session:
        return len(store.parts_of(session, upload_id))


def test_an_empty_part_is_refused_and_keeps_nothing(database: Database, tmp_path: Path) -> None:
    first = bootstrap.bootstrap(database.sessions)
    owner = Principal(first.organization_id, first.project_id, "user-test", "key_test", "project")
    blobs = LocalBlobStore(tmp_path / "files")
    upload_id = _upload(database, owner, 10)

    async def body() -> None:
        for _ in range(3):
            with pytest.raises(InvalidRequest):
                await files.add_part(database.sessions, blobs, owner, upload_id, _data(b""))

    anyio.run(body)
    assert _parts(database, upload_id) == 0
    assert not [p for p in (tmp_path / "files").rglob("*") if p.is_file()]


def test_parts_past_the_most_a_completion_may_name_are_refused(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "MAX_PARTS", 3)
    first = bootstrap.bootstrap(database.sessions)
    owner = Principal(first.organization_id, first.project_id, "user-test", "key_test", "project")
    blobs = LocalBlobStore(tmp_path / "files")
    upload_id = _upload(database, owner, 10)

    async def body() -> None:
        for _ in range(3):
            await files.add_part(database.sessions, blobs, owner, upload_id, _data(b"x"))
        with pytest.raises(InvalidRequest) as refused:
            await files.add_part(database.sessions, blobs, owner, upload_id, _data(b"x"))
        assert refused.value.code == "too_many_parts"

    anyio.run(body)
    assert _parts(database, upload_id) == 3
