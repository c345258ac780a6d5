"""What can go wrong forwarding to an OpenAI-compatible upstream, as facts about the upstream.

The upstream engine (`upstream.py`) classifies each failure (by the upstream's status, a timeout,
a broken or malformed stream) and raises one of these; none carries a URL, a key or anything the
`Scrubber` would remove, and the upstream's own words (`UpstreamRejected.upstream_message`,
`UpstreamFailed.detail`) are already scrubbed. `pipeline.engine_errors.client_error` says what
the client is told for each.
"""

from __future__ import annotations

import enum

from modelhost.engine.base import EngineFailed


class UpstreamFault(enum.Enum):
    """How an upstream failed a request (none of them the request's fault)."""

    CRASHED = "crashed"  # forwarding failed on our side, unexpectedly
    CONNECTION_FAILED = "connection_failed"  # the request could not be sent
    MISCONFIGURED = "misconfigured"  # 401/403/404: the model's upstream key or model name is wrong
    SERVER_ERROR = "server_error"  # a 5xx, or a status that is neither 200 nor an error about the request
    MALFORMED = "malformed"  # the answer is not OpenAI's format
    CONNECTION_BROKEN = "connection_broken"  # the connection broke mid-response
    TRUNCATED = "truncated"  # the response ended before every choice finished
    ERROR_EVENT = "error_event"  # the upstream streamed an error after the response began


class UpstreamFailed(EngineFailed):
    """The upstream failed the request (`fault`); retrying may work. `status` is its HTTP status
    where it answered with one, `detail` its own (scrubbed) words about an error event."""

    def __init__(self, message: str, fault: UpstreamFault, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.fault = fault
        self.status = status
        self.detail = detail


class UpstreamTimeout(EngineFailed):
    """The upstream did not answer in time; `began`: it had started answering, then went silent."""

    def __init__(self, message: str, *, began: bool = False) -> None:
        super().__init__(message)
        self.began = began


class UpstreamOverloaded(EngineFailed):
    """The upstream answered 429 or 503: it is overloaded; `retry_after` whole seconds (1-120)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamUnavailable(EngineFailed):
    """No replica could take the request: `unreachable` when every one tried could not be
    connected to, else every circuit is open. `retry_after`: seconds until one takes a trial."""

    def __init__(self, message: str, *, unreachable: bool, retry_after: int) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.retry_after = retry_after


class UpstreamRejected(EngineFailed):
    """The upstream refused the request itself (a 4xx about it): its `status` and its own
    (scrubbed) `upstream_message`, `param` and `code`, any of which may be empty."""

    def __init__(self, message: str, *, status: int, upstream_message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.upstream_message = upstream_message
        self.param = param
        self.code = code
