"""A multipart/form-data body read as a stream, one part at a time, its bytes never gathered whole.

Starlette's `request.form()` spools every file part to a temporary file before the route sees it;
the Files API wants a file's bytes to flow straight into the blob store, counted as they come. So
`FormReader` feeds the body's chunks to python-multipart's push parser and hands the route each
part in turn: its name and filename, then its data as an async iterator (`chunks()`) that ends
only at the part's closing boundary — a body that stops early is a 400 raised from inside the
iteration, so whatever was consuming it (a blob write) fails and keeps nothing. Text fields are
read whole but bounded (`text()`); the number of parts and the size of their headers are bounded.

    form = FormReader.of(request)
    while (part := await form.next_part()) is not None:
        if part.name == "file":
            await blobs.write(key, form.chunks(), limit=limit)
        else:
            value = await form.text(limit=1024)
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from modelhost.errors import APIError, InvalidRequest

MAX_PARTS = 16  # a file and a few fields (purpose, expires_after[anchor], expires_after[seconds])
MAX_HEADER_BYTES = 16 * 1024  # all headers of one part together


class ClientClosedRequest(APIError):
    """The client went away before its body was complete (logged as such; nobody reads the answer)."""

    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"


@dataclass(frozen=True)
class FormPart:
    """One part's headers: its field name, and its filename when it is a file."""

    name: str
    filename: str | None
    content_type: str


def _malformed(why: str) -> InvalidRequest:
    return InvalidRequest(f"The multipart/form-data body is malformed: {why}.", code="invalid_multipart")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("a part's header is not UTF-8") from None


class FormReader:
    """The parts of one multipart body, in order (see the module docstring)."""

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes) -> None:
        self._body = body
        self._events: deque[tuple[str, bytes, dict[str, bytes]]] = deque()  # (kind, data, headers)
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._header_bytes = 0
        self._headers: dict[str, bytes] = {}
        self._finished = False  # the closing boundary was parsed
        self._in_part = False  # a part's headers were handed out and its data not yet read to its end
        self._parts = 0
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value_data,
                    "on_header_end": self._header_end,
                    # A chunk may hold several parts: each part's headers travel with its own event.
                    "on_headers_finished": lambda: self._events.append(("headers", b"", self._headers)),
                    "on_part_data": lambda data, start, end: self._events.append(("data", bytes(data[start:end]), {})),
                    "on_part_end": lambda: self._events.append(("end", b"", {})),
                    "on_end": lambda: self._events.append(("finished", b"", {})),
                },
            )
        except Exception:  # a boundary it cannot use (too long)
            raise _malformed("the boundary is not usable") from None

    @classmethod
    def of(cls, request: Request) -> FormReader:
        """The reader of `request`'s body; a 400 unless it is multipart/form-data with a boundary."""
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidRequest(
                "This endpoint takes a multipart/form-data body (Content-Type: multipart/form-data; boundary=…).",
                code="invalid_content_type",
            )
        return cls(request.stream(), boundary)

    # -- parser callbacks (synchronous, within `_pump`) ------------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _malformed(f"a part's headers are longer than {MAX_HEADER_BYTES} bytes")

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if len(self._headers) >= 16:
            raise _malformed("a part has too many headers")
        self._headers[bytes(self._header_name).decode("latin-1").lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    # -- reading -----------------------------------------------------------------------------------

    async def _pump(self) -> None:
        """Feed the parser the next chunk of the body (events land in `_events`)."""
        try:
            chunk = await anext(self._body, None)
        except ClientDisconnect:
            raise ClientClosedRequest("The client closed the connection before the body was complete.") from None
        if chunk is None:
            raise _malformed("the body ended before its closing boundary")
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise _malformed("it does not follow RFC 7578") from None

    async def _event(self) -> tuple[str, bytes, dict[str, bytes]]:
        while not self._events:
            await self._pump()
        return self._events.popleft()

    async def next_part(self) -> FormPart | None:
        """The next part's headers (the previous part's unread data is skipped); None after the last part."""
        if self._in_part:
            async for _ in self.chunks():
                pass
        while True:
            kind, _, headers = await self._event()
            if kind == "finished":
                self._finished = True
                return None
            if kind == "headers":
                break
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise _malformed(f"it has more than {MAX_PARTS} parts")
        disposition = headers.get("content-disposition", b"")
        _, options = parse_options_header(disposition.decode("latin-1"))
        name = options.get(b"name")
        if name is None:
            raise _malformed("a part has no Content-Disposition name")
        filename = options.get(b"filename")
        self._in_part = True
        return FormPart(
            name=_text(name),
            filename=_text(filename) if filename is not None else None,
            content_type=_text(headers.get("content-type", b"application/octet-stream")),
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        """The current part's data, to its closing boundary (a body that ends before it is a 400)."""
        while self._in_part:
            kind, data, _ = await self._event()
            if kind == "data":
                if data:
                    yield data
            elif kind == "end":
                self._in_part = False

    async def text(self, *, limit: int) -> str:
        """The current part's data as UTF-8 text of at most `limit` bytes, else a 400."""
        value = bytearray()
        async for data in self.chunks():
            value += data
            if len(value) > limit:
                raise _malformed(f"a text field is longer than {limit} bytes")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("a text field is not UTF-8") from None
