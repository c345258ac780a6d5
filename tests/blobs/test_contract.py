"""The blob store contract, run against every implementation: the directory store and the S3 store
(against moto's S3 server on loopback, tests/blobs/s3server.py).

A write stores exactly its bytes and reports their size and MD5; past its limit, or when its
source fails or is cancelled, it raises and leaves nothing: no object, no temporary file, no
unfinished multipart upload. A read of a missing key raises `BlobMissing`; deleting is idempotent.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blobs.s3server import S3Server, s3_server
from modelhost.blobs import BlobMissing, BlobStore, BlobTooLarge
from modelhost.blobs.local import LocalBlobStore
from modelhost.blobs.s3 import PART_BYTES, S3BlobStore


@dataclass
class Store:
    kind: str
    blobs: BlobStore
    leftovers: Callable[[], list[str]]  # whatever the store holds besides whole blobs (temp files, open uploads)
    keys: Callable[[], list[str]]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def _local(root: Path) -> Store:
    def files() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []

    return Store(
        "local",
        LocalBlobStore(root),
        leftovers=lambda: [name for name in files() if Path(name).name.startswith(".")],
        keys=lambda: [name for name in files() if not Path(name).name.startswith(".")],
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        yield _local(tmp_path / "blobs")
        return
    server: S3Server = request.getfixturevalue("s3")
    prefix = f"{tmp_path.name}/"
    blobs = S3BlobStore(server.bucket, prefix=prefix, endpoint_url=server.endpoint_url, region="us-east-1")
    yield Store(
        "s3",
        blobs,
        leftovers=lambda: [k for k in server.unfinished_uploads() if k.startswith(prefix)],
        keys=lambda: [k[len(prefix):] for k in server.keys() if k.startswith(prefix)],
    )
    asyncio.run(blobs.close())


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _read(blobs: BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in blobs.read(key)])


def test_a_blob_is_written_read_back_and_deleted(store: Store) -> None:
    async def body() -> None:
        written = await store.blobs.write("files/file-a", _chunks(b"hello ", b"", b"world\n"), limit=100)
        assert (written.size, written.md5) == (12, hashlib.md5(b"hello world\n").hexdigest())
        assert await _read(store.blobs, "files/file-a") == b"hello world\n"
        assert store.keys() == ["files/file-a"]
        await store.blobs.delete("files/file-a")
        await store.blobs.delete("files/file-a")  # again: not an error
        with pytest.raises(BlobMissing):
            await _read(store.blobs, "files/file-a")

    asyncio.run(body())
    assert store.keys() == [] and store.leftovers() == []


def test_an_empty_blob_and_one_of_exactly_the_limit_are_kept(store: Store) -> None:
    async def body() -> None:
        assert (await store.blobs.write("files/empty", _chunks(), limit=10)).size == 0
        assert await _read(store.blobs, "files/empty") == b""
        assert (await store.blobs.write("files/ten", _chunks(b"0123456789"), limit=10)).size == 10

    asyncio.run(body())
    assert sorted(store.keys()) == ["files/empty", "files/ten"]


def test_past_the_limit_nothing_is_kept(store: Store) -> None:
    async def body() -> None:
        with pytest.raises(BlobTooLarge) as info:
            await store.blobs.write("files/big", _chunks(b"x" * 6, b"x" * 6), limit=10)
        assert info.value.limit == 10
        with pytest.raises(BlobMissing):
            await _read(store.blobs, "files/big")

    asyncio.run(body())
    assert store.keys() == [] and store.leftovers() == []


def test_a_large_blob_streams_in_parts_and_a_failure_late_in_it_leaves_nothing(store: Store) -> None:
    block = os.urandom(1024 * 1024)
    count = PART_BYTES // len(block) + 2  # more than one S3 part

    async def many(fail_at: int | None = None) -> AsyncIterator[bytes]:
        for i in range(count):
            if i == fail_at:
                raise ConnectionResetError("the client went away")
            yield block

    async def body() -> None:
        written = await store.blobs.write("files/large", many(), limit=count * len(block))
        assert written.size == count * len(block)
        assert written.md5 == hashlib.md5(block * count).hexdigest()
        digest = hashlib.md5()
        async for chunk in store.blobs.read("files/large"):
            assert len(chunk) <= PART_BYTES  # read back in chunks, never whole
            digest.update(chunk)
        assert digest.hexdigest() == written.md5
        with pytest.raises(ConnectionResetError):
            await store.blobs.write("files/broken", many(fail_at=count - 1), limit=count * len(block))
        with pytest.raises(BlobTooLarge):  # past the limit after a part was sent
            await store.blobs.write("files/over", many(), limit=count * len(block) - 1)

    asyncio.run(body())
    assert store.keys() == ["files/large"] and store.leftovers() == []


def test_a_cancelled_write_leaves_nothing(store: Store) -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await asyncio.sleep(30)
        yield b"never"

    async def body() -> None:
        task = asyncio.create_task(store.blobs.write("files/cancelled", slow(), limit=10_000))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(body())
    assert store.keys() == [] and store.leftovers() == []


def test_a_rewritten_key_is_whole_either_way(store: Store) -> None:
    async def body() -> None:
        await store.blobs.write("uploads/upload_1/part_1", _chunks(b"first"), limit=100)
        with pytest.raises(BlobTooLarge):
            await store.blobs.write("uploads/upload_1/part_1", _chunks(b"second, too long"), limit=10)
        assert await _read(store.blobs, "uploads/upload_1/part_1") == b"first"

    asyncio.run(body())
    assert store.leftovers() == []
