"""Blob storage for files and upload parts: a directory (default) or S3-compatible object storage."""

from modelhost.blobs.base import BlobMissing, BlobStore, BlobTooLarge, Written

__all__ = ["BlobMissing", "BlobStore", "BlobTooLarge", "Written"]
