"""The S3-compatible blob store: each key an object under a prefix of one bucket (AWS S3, MinIO, Ceph, R2…).

The client is boto3, the AWS SDK (maintained by AWS, speaks every S3-compatible service through
`endpoint_url`); its calls block, so each runs on a worker thread and the event loop never waits on
the network. Credentials come the SDK's standard way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a
profile, an instance role): modelhost's settings name none.

A write streams: bytes are gathered into `PART_BYTES` parts (S3's parts must be at least 5 MiB,
but the last) sent as a multipart upload, so a 512 MiB file never sits in memory whole; one under a
part goes as a single PUT. The object appears only when the upload is completed, so a key is whole
or absent; a write that fails or passes its limit aborts the multipart upload, which discards the
parts already sent. Storage errors are raised as `BlobStoreUnavailable` (an `OSError`, as the
directory store's disk errors are).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from modelhost.blobs.base import BlobMissing, Blocks, BlobStore, Written

T = TypeVar("T")
PART_BYTES = 8 * 1024 * 1024  # gathered before each part is sent (S3's minimum is 5 MiB)
READ_BYTES = 1024 * 1024  # read from the object's body per chunk
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class BlobStoreUnavailable(OSError):
    """The object store failed or could not be reached (the request may be retried)."""


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class S3BlobStore(BlobStore):
    """Blobs as objects `prefix + key` in `bucket`."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                # Path-style URLs for S3-compatible servers (MinIO, moto): they rarely serve bucket subdomains.
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            )
            client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self._client = client

    async def _call(self, function: Callable[..., T], **kwargs: Any) -> T:
        """One SDK call on a worker thread; its errors as `BlobStoreUnavailable` (missing objects as `BlobMissing`)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await anyio.to_thread.run_sync(lambda: function(**kwargs))
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise BlobMissing(kwargs.get("Key", "")) from exc
            raise BlobStoreUnavailable(f"object store error {_error_code(exc) or 'unknown'}") from exc
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(f"object store unreachable: {type(exc).__name__}") from exc

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, limit: int) -> Written:
        name = self.prefix + key
        blocks = Blocks(chunks, limit=limit, block_size=PART_BYTES)
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def send_part(data: bytes) -> None:
            nonlocal upload_id
            if upload_id is None:
                started = await self._call(self._client.create_multipart_upload, Bucket=self.bucket, Key=name)
                upload_id = str(started["UploadId"])
            number = len(parts) + 1
            sent = await self._call(
                self._client.upload_part, Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})

        try:
            last: bytes | None = None  # held back until the next: only the last block may go in one PUT
            async for block in blocks:
                if last is not None:
                    await send_part(last)
                last = block
            data = last or b""
            if upload_id is None:
                await self._call(self._client.put_object, Bucket=self.bucket, Key=name, Body=data)
            else:
                if data:
                    await send_part(data)
                await self._call(
                    self._client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
                upload_id = None  # completed: nothing to abort
        except BaseException:
            if upload_id is not None:
                with anyio.CancelScope(shield=True):  # a cancelled request still discards the parts it sent
                    try:
                        await self._call(self._client.abort_multipart_upload, Bucket=self.bucket, Key=name, UploadId=upload_id)
                    except (OSError, BlobMissing):
                        pass  # the bucket's lifecycle rule for incomplete uploads is the fallback (docs/files.md)
            raise
        return blocks.written()

    async def read(self, key: str) -> AsyncIterator[bytes]:
        found = await self._call(self._client.get_object, Bucket=self.bucket, Key=self.prefix + key)
        body = found["Body"]
        try:
            while True:
                try:
                    block: bytes = await anyio.to_thread.run_sync(body.read, READ_BYTES)
                except Exception as exc:  # the connection broke mid-object
                    raise BlobStoreUnavailable(f"object store read failed: {type(exc).__name__}") from exc
                if not block:
                    return
                yield block
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        try:
            await self._call(self._client.delete_object, Bucket=self.bucket, Key=self.prefix + key)
        except BlobMissing:
            pass

    async def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)
