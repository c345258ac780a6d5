"""`open_blob_store(settings)`: the blob store the settings name (the directory one unless `files_store = "s3"`)."""

from __future__ import annotations

from modelhost.blobs.base import BlobStore
from modelhost.config import Settings


def open_blob_store(settings: Settings) -> BlobStore:
    if settings.files_store == "s3":
        from modelhost.blobs.s3 import S3BlobStore

        if not settings.files_s3_bucket:
            raise ValueError("files_store is s3 but no bucket is set: set MODELHOST_FILES_S3_BUCKET")
        return S3BlobStore(
            settings.files_s3_bucket,
            prefix=settings.files_s3_prefix,
            endpoint_url=settings.files_s3_endpoint_url,
            region=settings.files_s3_region,
        )
    from modelhost.blobs.local import LocalBlobStore

    return LocalBlobStore(settings.files_dir or settings.home / "files")
