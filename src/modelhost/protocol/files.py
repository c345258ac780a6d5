"""`/v1/files` and `/v1/uploads`: the request bodies, query and objects, as OpenAI defines them.

`POST /v1/files` and `POST /v1/uploads/{id}/parts` are multipart bodies read as a stream by their
routes (api/multipart.py), not models; their text fields are checked against the types here.

    >>> CreateUpload.model_validate({"filename": "a.jsonl", "purpose": "batch", "bytes": 10, "mime_type": "text/jsonl"}).bytes
    10
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt

from modelhost.protocol.admin.common import CursorList, Id, Omitted, QueryModel
from modelhost.protocol.common import StoredStr, WireModel

#: What a client may upload a file for (CreateFileRequest.purpose).
UploadPurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
UPLOAD_PURPOSES: tuple[str, ...] = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
#: Every purpose a file may have: the uploadable ones and those of files the server writes (a batch's output).
FILE_PURPOSES: tuple[str, ...] = (*UPLOAD_PURPOSES, "batch_output", "assistants_output", "fine-tune-results")
#: An upload's life (Upload.status).
UploadStatus = Literal["pending", "completed", "cancelled", "expired"]

MIN_EXPIRES_SECONDS = 3600
MAX_EXPIRES_SECONDS = 2_592_000  # 30 days
MAX_FILENAME = 512
MAX_PARTS = 10_000  # part ids one completion may name

Filename = Annotated[StoredStr, Field(min_length=1, max_length=MAX_FILENAME)]


class ExpiresAfter(WireModel):
    """FileExpirationAfter: the file expires `seconds` (1 hour to 30 days) after its `anchor`, its creation."""

    anchor: Literal["created_at"]
    seconds: StrictInt = Field(ge=MIN_EXPIRES_SECONDS, le=MAX_EXPIRES_SECONDS)  # not `true`, not "3600"


class FileObject(BaseModel):
    """OpenAIFile. `status` is deprecated by OpenAI; every file here is `processed`."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = Omitted("When the file expires (Unix seconds); absent when it does not.")
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = Omitted("Deprecated by OpenAI.")


class FileList(CursorList):
    """ListFilesResponse."""

    data: list[FileObject]


class DeletedFile(BaseModel):
    """DeleteFileResponse."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FileListQuery(QueryModel):
    """`GET /v1/files`: up to `limit` files (default 10,000, as OpenAI's) after `after`, newest first by default."""

    purpose: Annotated[StoredStr, Field(max_length=32)] | None = Field(default=None, description="Only files with this purpose.")
    limit: int = Field(default=10_000, ge=1, le=10_000, description="How many files to return, 1 to 10,000.")
    order: Literal["asc", "desc"] = Field(default="desc", description="By created_at: asc oldest first, desc newest first.")
    after: Id | None = Field(default=None, description="Return the files after this file id (the previous page's last_id).")


class CreateUpload(WireModel):
    """CreateUploadRequest: an upload of `bytes` bytes, sent as parts, that becomes one file."""

    filename: Filename
    purpose: UploadPurpose
    bytes: StrictInt = Field(ge=0)  # `false` is not 0
    mime_type: Annotated[StoredStr, Field(min_length=1, max_length=128)]
    expires_after: ExpiresAfter | None = None


class CompleteUpload(WireModel):
    """CompleteUploadRequest: the parts in the order the file holds them, and optionally its MD5 (hex)."""

    part_ids: Annotated[list[Id], Field(max_length=MAX_PARTS)]
    md5: Annotated[StoredStr, Field(max_length=64)] | None = None


class UploadObject(BaseModel):
    """Upload; `file` is the file it became, once completed."""

    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: UploadStatus
    expires_at: int
    file: FileObject | None = None


class UploadPartObject(BaseModel):
    """UploadPart."""

    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str
