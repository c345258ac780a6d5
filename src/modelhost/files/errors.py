"""The Files and Uploads APIs' errors, in OpenAI's envelope (`modelhost.errors`)."""

from __future__ import annotations

from modelhost.errors import APIError, InvalidRequest, NotFound, ServiceUnavailable


class FileTooLarge(APIError):
    """The file (or part) is larger than this server takes; nothing of it was kept."""

    status = 413
    type = "invalid_request_error"
    code = "file_too_large"

    def __init__(self, limit: int, *, what: str = "File", param: str = "file") -> None:
        super().__init__(f"{what} too large: the limit is {limit} bytes.", param=param)


def file_not_found(file_id: str) -> NotFound:
    """The same answer for an id that does not exist and for another project's file."""
    return NotFound(f"No such File object: {file_id}", param="id")


def upload_not_found(upload_id: str) -> NotFound:
    return NotFound(f"No such Upload object: {upload_id}", param="upload_id")


def storage_limit_exceeded(limit: int, used: int) -> InvalidRequest:
    return InvalidRequest(
        f"This project's files would use more than its storage limit of {limit} bytes ({used} bytes in use). "
        "Delete files you no longer need and retry.",
        code="storage_limit_exceeded",
    )


def storage_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("The file store is unavailable right now; retry shortly.")
