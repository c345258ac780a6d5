"""What the client is told when an engine cannot serve its request: engine errors → `APIError`, once.

Engines (`modelhost.engine`) raise errors in their own terms: a full queue, an upstream's status
and words, a busy schema compiler. This is the only place that turns them into what an OpenAI
client reads (status, message, `type`, `param`, `code`, Retry-After). The pipeline calls it where
an engine's error reaches it (submitting, reading events, embedding), and the app's error handler
calls it for one raised while a request is planned (a busy schema compiler)::

    try:
        generation = engine.submit(request)
    except EngineError as exc:
        raise client_error(exc) from exc        # EngineOverloaded → 503 overloaded, Retry-After: 1

Messages never carry internals: an upstream's own words arrive already scrubbed by the engine.
"""

from __future__ import annotations

from typing import overload

from modelhost.engine.base import EngineError, EngineFailed, EngineOverloaded
from modelhost.engine.embedding.base import EmbedderFailed
from modelhost.engine.fair_share import RefusedAfterWaiting
from modelhost.engine.grammar_errors import GrammarCompilerBusy
from modelhost.engine.upstream_errors import (
    UpstreamFailed,
    UpstreamFault,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from modelhost.errors import (
    APIError,
    BadGateway,
    ContextLengthExceeded,
    GatewayTimeout,
    ServerError,
    ServiceUnavailable,
    UpstreamRequestError,
)

# An upstream's failures, as the client reads them (all 502: retrying may work).
_UPSTREAM_FAULTS = {
    UpstreamFault.CRASHED: "The model's upstream server failed; retry the request.",
    UpstreamFault.CONNECTION_FAILED: "The connection to the model's upstream server failed; retry the request.",
    UpstreamFault.MISCONFIGURED: (
        "The model's upstream server refused the request modelhost sent; the operator must fix this model's configuration."
    ),
    UpstreamFault.MALFORMED: "The model's upstream server sent a malformed response; retry the request.",
    UpstreamFault.CONNECTION_BROKEN: "The connection to the model's upstream server broke while generating; retry the request.",
    UpstreamFault.TRUNCATED: "The model's upstream server ended the response early; retry the request.",
}


def _overloaded(message: str, *, retry_after: int = 1, code: str = "overloaded") -> ServiceUnavailable:
    return ServiceUnavailable(message, code=code, headers={"Retry-After": str(retry_after)})


@overload
def client_error(exc: EngineError) -> APIError: ...


@overload
def client_error(exc: BaseException) -> APIError | None: ...


def client_error(exc: BaseException) -> APIError | None:
    """The error the client is told for engine error `exc`; None when `exc` is no engine error."""
    if not isinstance(exc, EngineError):
        return None
    if isinstance(exc, (EngineOverloaded, RefusedAfterWaiting)):
        return _overloaded("The server is overloaded; retry shortly.")
    if isinstance(exc, GrammarCompilerBusy):
        if exc.per_organization:
            return _overloaded("Too many schemas of this organization are being compiled at once; retry shortly.")
        return _overloaded("The server is compiling too many schemas at once; retry shortly.")
    if isinstance(exc, UpstreamRejected):
        return _rejected(exc)
    if isinstance(exc, UpstreamOverloaded):
        return _overloaded("The model's upstream server is overloaded; retry shortly.", retry_after=exc.retry_after)
    if isinstance(exc, UpstreamUnavailable):
        if exc.unreachable:
            message = "The model's upstream servers cannot be reached right now; retry shortly."
        else:
            message = "The model's upstream servers are failing; retry shortly."
        return _overloaded(message, retry_after=exc.retry_after, code="upstream_unavailable")
    if isinstance(exc, UpstreamTimeout):
        if exc.began:
            return GatewayTimeout("The model's upstream server stopped answering; retry the request.")
        return GatewayTimeout("The model's upstream server did not answer in time; retry the request.")
    if isinstance(exc, UpstreamFailed):
        return _upstream_failed(exc)
    if isinstance(exc, EmbedderFailed):
        return ServerError("The model failed while embedding; retry the request.")
    assert isinstance(exc, EngineFailed), f"no client error is defined for {type(exc).__name__}"
    return ServerError("The model failed while generating; retry the request.")


def _rejected(exc: UpstreamRejected) -> APIError:
    """The upstream's 4xx about the request: its status (422 as 400) and its own words."""
    message = exc.upstream_message or f"The model's upstream server rejected the request (HTTP {exc.status})."
    if exc.code == "context_length_exceeded":
        return ContextLengthExceeded(message, param=exc.param or "messages")
    return UpstreamRequestError(message, status=400 if exc.status == 422 else exc.status, param=exc.param, code=exc.code)


def _upstream_failed(exc: UpstreamFailed) -> BadGateway:
    if exc.fault is UpstreamFault.SERVER_ERROR:
        return BadGateway(f"The model's upstream server failed (HTTP {exc.status}); retry the request.")
    if exc.fault is UpstreamFault.ERROR_EVENT:
        detail = exc.detail or "no details"
        return BadGateway(f"The model's upstream server failed while generating ({detail[:300]}); retry the request.")
    return BadGateway(_UPSTREAM_FAULTS[exc.fault])
