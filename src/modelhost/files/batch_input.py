"""A `batch` file checked at upload: JSON Lines of requests a batch can run, read from the blob as a stream.

Each non-blank line is ``{"custom_id": …, "method": "POST", "url": …, "body": {"model": …, …}}``;
one file holds at most `MAX_LINES` requests, all for one `url` and one `body.model`, each
`custom_id` once. A line is at most `max_line_bytes` (a longer one could not have been a request
body either). The first problem is a 400 naming its line (counted from 1, blank lines keep their
number), before the file is stored::

    summary = await check_batch_input(blobs.read(key), max_line_bytes=8 << 20)   # BatchInput(lines=3, url=…, model=…)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from modelhost.errors import InvalidRequest

MAX_LINES = 50_000
MAX_CUSTOM_ID = 512  # the batch lines' column; OpenAI documents no limit of its own
MAX_MODEL = 256
BATCH_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


@dataclass(frozen=True)
class BatchInput:
    """What a valid batch file holds: how many requests, and the one url and model they all name."""

    lines: int
    url: str
    model: str


def invalid_line(number: int, problem: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid batch input file: line {number}: {problem}", param="file", code="invalid_batch_input")


class LineTooLong(InvalidRequest):
    """A line of the file is longer than any request body this server takes (`number` names it, from 1)."""

    def __init__(self, number: int, max_line_bytes: int) -> None:
        super().__init__(
            f"Invalid batch input file: line {number}: the line is longer than {max_line_bytes} bytes.",
            param="file",
            code="invalid_batch_input",
        )
        self.number = number


async def numbered_lines(chunks: AsyncIterable[bytes], *, max_line_bytes: int) -> AsyncIterator[tuple[int, bytes]]:
    """(number, bytes) of each non-blank line, numbered from 1; a line over `max_line_bytes` is a 400 naming it
    (`LineTooLong`), raised before the line is held whole. The batch runner reads its input files with it too."""
    pending = bytearray()
    number = 0
    async for chunk in chunks:
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            number += 1
            raw = bytes(pending[start:end])
            start = end + 1
            if len(raw) > max_line_bytes:
                raise LineTooLong(number, max_line_bytes)
            if raw.strip():
                yield number, raw
        del pending[:start]
        if len(pending) > max_line_bytes:
            raise LineTooLong(number + 1, max_line_bytes)
    if pending.strip():
        yield number + 1, bytes(pending)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _is_unicode(text: str) -> bool:
    """No unpaired surrogate (JSON can spell one; it has no UTF-8 form and no store can keep it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_request(number: int, raw: bytes) -> dict[str, Any]:
    """One line as a request object, its fields checked; a 400 naming the line if it is not one."""
    try:
        line = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise invalid_line(number, "the line is not valid JSON.") from None
    if not isinstance(line, dict):
        raise invalid_line(number, "the line is not a JSON object.")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise invalid_line(number, "`custom_id` must be a non-empty string.")
    if len(custom_id) > MAX_CUSTOM_ID or "\x00" in custom_id or not _is_unicode(custom_id):
        raise invalid_line(number, f"`custom_id` must be at most {MAX_CUSTOM_ID} characters of valid Unicode, without NUL.")
    if line.get("method") != "POST":
        raise invalid_line(number, '`method` must be "POST".')
    url = line.get("url")
    if url not in BATCH_URLS:
        raise invalid_line(number, f"`url` must be one of {', '.join(BATCH_URLS)}.")
    body = line.get("body")
    if not isinstance(body, dict):
        raise invalid_line(number, "`body` must be a JSON object (the request's body).")
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL:
        raise invalid_line(number, "`body.model` must be a model id.")
    return line


async def check_batch_input(chunks: AsyncIterable[bytes], *, max_line_bytes: int) -> BatchInput:
    """Read the whole file once, line by line, and check every request; the first problem is a 400 naming its line."""
    seen: set[bytes] = set()  # digests of the custom_ids: 16 bytes each, whatever their length
    url = model = ""
    count = 0
    async for number, raw in numbered_lines(chunks, max_line_bytes=max_line_bytes):
        line = parse_request(number, raw)
        count += 1
        if count > MAX_LINES:
            raise invalid_line(number, f"a batch file holds at most {MAX_LINES} requests.")
        if count == 1:
            url, model = line["url"], line["body"]["model"]
        elif line["url"] != url:
            raise invalid_line(number, f"every request of a batch file must have the same `url` ({url}).")
        elif line["body"]["model"] != model:
            raise invalid_line(number, f"every request of a batch file must have the same `body.model` ({model}).")
        digest = hashlib.blake2b(line["custom_id"].encode("utf-8"), digest_size=16).digest()
        if digest in seen:
            raise invalid_line(number, f"`custom_id` {line['custom_id']!r} is used by an earlier line; each must be unique.")
        seen.add(digest)
    if count == 0:
        raise InvalidRequest("Invalid batch input file: it holds no requests.", param="file", code="invalid_batch_input")
    return BatchInput(lines=count, url=url, model=model)
