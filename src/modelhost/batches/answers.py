"""What a batch line's answer becomes: its refusals before it runs, whether an answer is only "not now",
its usage, and its line in the output or error file (OpenAI's format, the response body's bytes spliced in);
and the batch's error when such a file cannot be stored.
"""

from __future__ import annotations

import json
import uuid

from pydantic import TypeAdapter, ValidationError

from modelhost.batches.dispatch import Answer
from modelhost.batches.lines import InputLine
from modelhost.errors import APIError
from modelhost.protocol.batches import BatchError
from modelhost.store import batches as store

_BOOL = TypeAdapter(bool)
EXPIRED_ERROR = {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}


def refusal(line: InputLine, endpoint: str) -> Answer | None:
    """The 400 a line gets before it runs: batches are not streamed, and a response is not run in the background."""
    for param in ("stream", "background") if endpoint == "/v1/responses" else ("stream",):
        if _true(line.body.get(param)):
            message = f"'{param}' is not supported in batches: each line is answered whole in the output file."
            body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "unsupported_value"}}
            return Answer(400, json.dumps(body).encode(), f"req_{uuid.uuid4().hex}")
    return None


def _true(value: object) -> bool:
    """Whether the endpoint would read `value` as true: its models take a bool the lax way, so `"true"`,
    `1` or `"on"` stream (or run in the background) as `true` does."""
    try:
        return _BOOL.validate_python(value) is True
    except ValidationError:
        return False  # not a bool at all: the endpoint's own 400


def transient(answer: Answer) -> bool:
    """A 503, or a 429 that is a rate limit (not a spent quota): the same request may succeed later."""
    if answer.status == 503:
        return True
    if answer.status != 429:
        return False
    try:
        code = json.loads(answer.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    return bool(code != "insufficient_quota")


def usage_of(body: bytes) -> tuple[int, int, int]:
    """(input, cached, output) tokens of a successful answer (chat, completions, embeddings or a response)."""
    try:
        usage = json.loads(body).get("usage") or {}
    except (ValueError, AttributeError):
        return 0, 0, 0
    if not isinstance(usage, dict):
        return 0, 0, 0
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}

    def number(value: object) -> int:
        return value if isinstance(value, int) else 0

    return (
        number(usage.get("prompt_tokens", usage.get("input_tokens"))),
        number(details.get("cached_tokens") if isinstance(details, dict) else 0),
        number(usage.get("completion_tokens", usage.get("output_tokens"))),
    )


def output_line(row: store.BatchLine) -> bytes:
    """The row as a line of the output or error file; the response body spliced in as the bytes it was."""
    head = {"id": row.record_id, "custom_id": row.custom_id}
    if row.error is not None:
        return json.dumps({**head, "response": None, "error": row.error}).encode() + b"\n"
    response = json.dumps({"status_code": row.status_code, "request_id": row.request_id})
    return (
        json.dumps(head)[:-1].encode()
        + b', "response": '
        + response[:-1].encode()
        + b', "body": '
        + (row.body or "null").encode()
        + b'}, "error": null}\n'
    )


def unstored_file_error(kind: str, refused: APIError) -> BatchError:
    """The error of a batch whose `kind` ("output" or "error") file the Files API refused: past the project's
    storage limit (`storage_limit_exceeded`, naming the limit) or files_max_bytes (`file_too_large`)."""
    return BatchError(
        code=refused.code or "file_refused",
        message=(
            f"The batch's {kind} file could not be stored, so the answers it would hold are not kept; the requests "
            f"ran, are counted in request_counts and usage, and are billed. {refused.message}"
        ),
    )
