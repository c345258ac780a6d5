"""One JSON line per request, and log formatting that cannot be forged from a request.

The access line carries ids, the route template, status, token counts and timings: never a key,
a key hash, a header, a query string, a path or a prompt. It is written with ``ensure_ascii``, so
every control character a client managed to get into a field is escaped (``\\u001b``), and one
request can only ever make one line. `SafeFormatter` does the same for every other log record.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

ACCESS_LOGGER = "modelhost.access"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """``"a\\nb"`` → ``"a\\\\x0ab"``: control characters made visible, so a value cannot start a new line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


@dataclass
class Exchange:
    """What the access line says about one request; filled in as the request travels."""

    request_id: str
    method: str
    route: str = "unmatched"
    status: int = 0
    organization: str | None = None
    project: str | None = None
    api_key_id: str | None = None
    model: str | None = None
    generations: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    outcome: str = "ok"  # ok, client_disconnected, deadline_exceeded, shutting_down, body_timeout
    started: float = field(default_factory=time.perf_counter, repr=False)

    def note_settled(self, *, model: str, prompt_tokens: int, completion_tokens: int, ttft: float | None) -> None:
        self.model = model
        self.generations += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if ttft is not None and self.ttft_ms is None:
            self.ttft_ms = round(ttft * 1000, 1)

    def line(self) -> str:
        fields = asdict(self)
        del fields["started"]
        fields = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": "request", **fields}
        return json.dumps(fields, ensure_ascii=True, separators=(",", ":"))


# The exchange of the request the current task serves. A context variable (not a global value):
# each request's task, and the tasks it starts, see their own; the pipeline notes generations here
# without knowing about HTTP.
_current: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar("modelhost_exchange", default=None)


def current_exchange() -> Exchange | None:
    return _current.get()


def enter_exchange(exchange: Exchange) -> contextvars.Token[Exchange | None]:
    return _current.set(exchange)


def leave_exchange(token: contextvars.Token[Exchange | None]) -> None:
    _current.reset(token)


class AccessLog:
    """Writes `Exchange` lines to the ``modelhost.access`` logger (INFO) when enabled."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._logger = logging.getLogger(ACCESS_LOGGER)

    def write(self, exchange: Exchange) -> None:
        if self.enabled:
            self._logger.info(exchange.line())


class SafeFormatter(logging.Formatter):
    """A formatter whose messages cannot contain raw control characters (tracebacks keep their lines)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        safe = escape_control(message)
        if safe != message:
            record = logging.makeLogRecord({**record.__dict__, "msg": safe, "args": None})
        return super().format(record)


def configure_logging(*, access_log: bool, level: int = logging.WARNING) -> None:
    """Process-wide logging for `modelhost serve`: safe records on stderr, access lines as bare JSON."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    access.handlers.clear()
    if access_log:
        line_handler = logging.StreamHandler(sys.stderr)
        line_handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(line_handler)
        access.setLevel(logging.INFO)
