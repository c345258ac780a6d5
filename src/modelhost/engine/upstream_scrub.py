"""What an upstream's words may carry that no client and no log line may: its URLs, host names, file
paths, and credentials.

An upstream's 4xx message is relayed to the client (it is about the client's request), and servers
write surprising things into error messages: the URL they were called on, a traceback's paths, or
the request's own `Authorization` header ("invalid token Bearer sk-…", a proxy echoing headers).
``Scrubber(secrets=[api_key], hidden=[url, host]).clean(text)`` removes:

- every configured secret (the upstream key) and every run of 8+ key characters that is a piece
  of one (a truncated key, "sk-abc…xyz" fragments), as ``(secret)``;
- anything that looks like a credential: ``Bearer …``/``Basic …``, ``sk-…``-style keys,
  ``api_key=…``/``"token": "…"`` assignments, and long opaque tokens (32+ letters and digits);
- the configured URLs and hosts, any other URL (``(upstream)``) and file paths (``(path)``);
- control characters; whitespace is collapsed and the text cut to 1,000 characters.

`scrub` is the part for log lines (secrets, credentials, the configured names; paths and ids kept):
`ScrubbingFilter` applies it to every record (message, arguments and traceback) of the loggers an
upstream engine writes to, while that engine runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_URL = re.compile(r"\b(?:https?|wss?)://[^\s\"'<>]+", re.IGNORECASE)
_PATH = re.compile(r"(?<![\w.])/(?:[\w.-]+/)+[\w.-]+")  # /opt/vllm/engine.py: an upstream's internals
_SCHEME = re.compile(r"\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=*-]{6,}", re.IGNORECASE)
_KEY_LIKE = re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)[-_][A-Za-z0-9._*-]{6,}")  # sk-…, sk-proj-…, sk_live_…, rk_…
_ASSIGNED = re.compile(
    r"\b((?:x-)?api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password|passwd|authorization)"
    r"(\"?'?\s*[:=]\s*\"?'?)[^\s\"',;}]{8,}",
    re.IGNORECASE,
)
_OPAQUE = re.compile(r"(?<![A-Za-z0-9_+/=-])[A-Za-z0-9_+/=-]{32,}(?![A-Za-z0-9_+/=-])")
_PIECE = re.compile(r"[A-Za-z0-9._~+/=*-]{8,}")
MAX_MESSAGE = 1000
SECRET = "(secret)"


def _opaque(match: re.Match[str]) -> str:
    token = match.group(0)
    has_digit = any(c.isdigit() for c in token)
    has_alpha = any(c.isalpha() for c in token)
    return SECRET if has_digit and has_alpha else token


class Scrubber:
    """See the module docstring; `secrets` are credentials, `hidden` are names (URLs, hosts) to hide."""

    def __init__(self, *, secrets: Iterable[str | None] = (), hidden: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._hidden = sorted({h for h in hidden if h}, key=len, reverse=True)

    def _piece(self, match: re.Match[str]) -> str:
        """A run of key characters holding 8+ consecutive characters of a secret ("abcd1234****")."""
        run = match.group(0)
        for part in re.split(r"[*.]+", run):
            if len(part) >= 8 and any(part in secret for secret in self._secrets):
                return SECRET
        return run

    def scrub(self, text: str) -> str:
        """`text` without the secrets, anything credential-like, or the configured names (for log lines:
        lines, paths and ids kept)."""
        for secret in self._secrets:
            text = text.replace(secret, SECRET)
        for name in self._hidden:
            text = text.replace(name, "(upstream)")
        if self._secrets:
            text = _PIECE.sub(self._piece, text)
        text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{SECRET}", text)
        text = _ASSIGNED.sub(lambda m: f"{m.group(1)}{m.group(2)}{SECRET}", text)
        return _KEY_LIKE.sub(SECRET, text)

    def clean(self, message: str) -> str:
        """An upstream's message as a client may read it: scrubbed, without any URL, file path or long
        opaque token, printable, one line, at most 1,000 characters."""
        message = _URL.sub("(upstream)", self.scrub(message))
        message = _PATH.sub("(path)", _OPAQUE.sub(_opaque, message))
        message = "".join(ch if ch.isprintable() else " " for ch in message)
        return " ".join(message.split())[:MAX_MESSAGE]

    def field(self, value: str | None) -> str | None:
        """A short field (`param`, `code`) passed on only when scrubbing leaves it unchanged."""
        if value is None or self.clean(value) != value:
            return None
        return value


class ScrubbingFilter(logging.Filter):
    """Rewrites each record's message and traceback through a `Scrubber` (never drops a record)."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self._scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it always does
            return True
        record.msg, record.args = self._scrubber.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrubber.scrub(record.exc_text)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self._scrubber.scrub(record.stack_info)
        return True
