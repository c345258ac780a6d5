"""The Files and Uploads APIs as plain functions: a session factory, the blob store and the caller's
`Principal` in, OpenAI's objects (dicts) out. api/files.py and api/uploads.py are the thin routes;
the batch runner reads input files and writes its output files through the same functions.

    file = await create_file(sessions, blobs, principal, purpose="batch_output", filename="out.jsonl",
                             chunks=lines, limit=settings.files_max_bytes)
    retrieve_file(sessions, principal, file["id"])                 # the file object, or a 404
    async for chunk in await file_content(sessions, blobs, principal, file["id"]): ...
"""

from modelhost.files.batch_input import BATCH_URLS, MAX_LINES, BatchInput, check_batch_input
from modelhost.files.errors import FileTooLarge
from modelhost.files.objects import (
    Room,
    StagedFile,
    check_room,
    create_file,
    delete_file,
    discard,
    file_content,
    list_files,
    open_content,
    register_file,
    reserved_room,
    retrieve_file,
    stage_file,
)
from modelhost.files.sweep import sweep_blobs
from modelhost.files.uploads import add_part, cancel_upload, complete_upload, create_upload

__all__ = [
    "BATCH_URLS",
    "MAX_LINES",
    "BatchInput",
    "FileTooLarge",
    "Room",
    "StagedFile",
    "add_part",
    "cancel_upload",
    "check_batch_input",
    "check_room",
    "complete_upload",
    "create_file",
    "create_upload",
    "delete_file",
    "discard",
    "file_content",
    "list_files",
    "open_content",
    "register_file",
    "reserved_room",
    "retrieve_file",
    "stage_file",
    "sweep_blobs",
]
