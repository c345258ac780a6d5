"""`/v1/files`, `/v1/files/{file_id}` and `/v1/files/{file_id}/content`.

Thin routes over `modelhost.files`: inference keys (as for chat completions), the caller's project
only. `POST /v1/files` reads its multipart body as a stream (api/multipart.py): the file's bytes
go straight into the blob store, counted against `files_max_bytes` as they come (413 past it,
nothing kept), whether `purpose` comes before the file (as the SDKs send it) or after; the most
the file can be (Content-Length, else files_max_bytes) is reserved in the project's storage before
a byte is read, so concurrent uploads never put more than the limit on disk. The content is
streamed back the same way.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from modelhost import files
from modelhost.api.admin.deps import ERRORS, parse_query, query_doc, stored_path_params
from modelhost.api.deps import app_state, principal, streamed_body
from modelhost.api.multipart import FormReader
from modelhost.auth import Principal
from modelhost.errors import InvalidRequest
from modelhost.protocol.files import UPLOAD_PURPOSES, DeletedFile, ExpiresAfter, FileList, FileListQuery, FileObject

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/files",
    tags=["Files"],
    dependencies=[Depends(principal), Depends(stored_path_params)],
    responses={**ERRORS, 413: ERRORS[400]},
)

TEXT_FIELD_BYTES = 1024
EXPIRES_FIELDS = {"expires_after[anchor]": "anchor", "expires_after[seconds]": "seconds"}
_CREATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
                    },
                }
            }
        },
    }
}


def _purpose(value: str | None) -> str:
    if value is None:
        raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
    if value not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid value for 'purpose': {value[:64]!r} is not one of {', '.join(UPLOAD_PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    return value


def _expires_at(fields: dict[str, str]) -> datetime | None:
    given: dict[str, object] = {EXPIRES_FIELDS[name]: value for name, value in fields.items() if name in EXPIRES_FIELDS}
    if not given:
        return None
    seconds = given.get("seconds")
    if isinstance(seconds, str) and seconds.isascii() and seconds.isdigit() and len(seconds) <= 12:
        given["seconds"] = int(seconds)  # a form field is text; the model takes only a real integer
    try:
        after = ExpiresAfter.model_validate(given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise InvalidRequest(
            f"Invalid value for 'expires_after{'.' + where if where else ''}': {first.get('msg', 'invalid value')}.",
            param="expires_after",
            code="invalid_value",
        ) from None
    return datetime.now(timezone.utc) + timedelta(seconds=after.seconds)


def _most_bytes(request: Request, files_max_bytes: int) -> int:
    """The most bytes this request's file can be: its whole body's Content-Length when it has one
    (the file is a part of the body), else files_max_bytes. Reserved before a byte is read."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and len(declared) <= 18:
        return min(files_max_bytes, int(declared))
    return files_max_bytes


@router.post("", response_model=FileObject, dependencies=[Depends(streamed_body)], openapi_extra=_CREATE_DOC)
async def create_file(request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    state = app_state(request)
    settings = state.settings
    most = _most_bytes(request, settings.files_max_bytes)
    async with files.reserved_room(state.sessions, who, most, settings.project_storage_limit_bytes) as room:
        form = FormReader.of(request)
        fields: dict[str, str] = {}
        staged: files.StagedFile | None = None
        filename = ""
        try:
            while (part := await form.next_part()) is not None:
                if part.name == "file":
                    if staged is not None:
                        raise InvalidRequest("Send one `file` per request.", param="file", code="invalid_value")
                    if "purpose" in fields:
                        _purpose(fields["purpose"])  # refused before the file is read
                    filename = part.filename or "file"
                    staged = await files.stage_file(state.blobs, form.chunks(), limit=settings.files_max_bytes)
                elif part.name == "purpose" or part.name in EXPIRES_FIELDS:
                    fields[part.name] = await form.text(limit=TEXT_FIELD_BYTES)
                else:
                    logger.info("ignored multipart field %r of POST /v1/files", part.name[:64])
            if staged is None:
                raise InvalidRequest("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
            purpose = _purpose(fields.get("purpose"))
            expires_at = _expires_at(fields)
        except BaseException:
            if staged is not None:
                await files.discard(state.blobs, staged.blob_key)
            raise
        made = await files.register_file(
            state.sessions,
            state.blobs,
            who,
            staged,
            purpose=purpose,
            filename=filename,
            expires_at=expires_at,
            storage_limit=settings.project_storage_limit_bytes,
            max_line_bytes=settings.max_body_bytes,
            room=room,
        )
    return JSONResponse(made)


@router.get("", response_model=FileList, openapi_extra=query_doc(FileListQuery))
def list_files(request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    query = parse_query(request, FileListQuery)
    return JSONResponse(files.list_files(app_state(request).sessions, who, query))


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    return JSONResponse(files.retrieve_file(app_state(request).sessions, who, file_id))


@router.delete("/{file_id}", response_model=DeletedFile)
async def delete_file(file_id: str, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    state = app_state(request)
    return JSONResponse(await files.delete_file(state.sessions, state.blobs, who, file_id))


@router.get("/{file_id}/content", response_class=StreamingResponse, responses={200: {"content": {"application/octet-stream": {}}}})
async def file_content(file_id: str, request: Request, who: Principal = Depends(principal)) -> StreamingResponse:
    state = app_state(request)
    found, chunks = await files.open_content(state.sessions, state.blobs, who, file_id)
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"content-length": str(found["bytes"])}
    )
