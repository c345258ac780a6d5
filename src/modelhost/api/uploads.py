"""`/v1/uploads`, `…/{upload_id}/parts`, `…/{upload_id}/complete` and `…/{upload_id}/cancel`.

Thin routes over `modelhost.files` (files/uploads.py): inference keys, the caller's project only.
A part's multipart body is read as a stream (api/multipart.py) straight into the blob store, at
most 64 MiB (and what the upload still lacks) per part; the upload is looked up before a byte of
it is read.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from modelhost import files
from modelhost.api.admin.deps import ERRORS, stored_path_params
from modelhost.api.deps import app_state, principal, streamed_body
from modelhost.api.multipart import FormReader
from modelhost.auth import Principal
from modelhost.errors import InvalidRequest
from modelhost.files.uploads import MAX_PART_BYTES
from modelhost.protocol.files import CompleteUpload, CreateUpload, UploadObject, UploadPartObject

router = APIRouter(
    prefix="/v1/uploads",
    tags=["Uploads"],
    dependencies=[Depends(principal), Depends(stored_path_params)],
    responses={**ERRORS, 413: ERRORS[400]},
)

_PART_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string", "format": "binary"}}}
            }
        },
    }
}


@router.post("", response_model=UploadObject)
def create_upload(body: CreateUpload, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    settings = app_state(request).settings
    made = files.create_upload(
        app_state(request).sessions,
        who,
        body,
        max_bytes=settings.files_max_bytes,
        storage_limit=settings.project_storage_limit_bytes,
    )
    return JSONResponse(made)


@router.post("/{upload_id}/parts", response_model=UploadPartObject, dependencies=[Depends(streamed_body)], openapi_extra=_PART_DOC)
async def add_upload_part(upload_id: str, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    state = app_state(request)
    form = FormReader.of(request)
    while (part := await form.next_part()) is not None:
        if part.name == "data":
            limit = min(MAX_PART_BYTES, state.settings.files_max_bytes)
            return JSONResponse(await files.add_part(state.sessions, state.blobs, who, upload_id, form.chunks(), part_limit=limit))
    raise InvalidRequest("Missing required parameter: 'data'.", param="data", code="missing_required_parameter")


@router.post("/{upload_id}/complete", response_model=UploadObject)
async def complete_upload(upload_id: str, body: CompleteUpload, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    state = app_state(request)
    done = await files.complete_upload(state.sessions, state.blobs, who, upload_id, body, max_line_bytes=state.settings.max_body_bytes)
    return JSONResponse(done)


@router.post("/{upload_id}/cancel", response_model=UploadObject)
async def cancel_upload(upload_id: str, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    state = app_state(request)
    return JSONResponse(await files.cancel_upload(state.sessions, state.blobs, who, upload_id))

