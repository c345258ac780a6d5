"""Running the app under uvicorn with the limits uvicorn lacks, and a graceful SIGTERM.

uvicorn gives us a keep-alive timeout, a connection cap (`limit_concurrency`, 503 beyond it) and a
graceful-shutdown timeout. It has no deadline for reading request headers (a connection may trickle
one byte a minute and stay forever), no head-size limit with httptools, and a client that stops
reading a response blocks the response's sender for good, and the answers it gives on its own are
plain text. `GuardedProtocol` adds the three limits and OpenAI's envelope:

- the request head (request line + headers) must arrive within `header_timeout` of the connection
  opening or of the first byte of the next keep-alive request, else the connection is closed;
- a head over `max_header_bytes` is answered 431 and the connection closed;
- a response whose send buffer stays full for `send_timeout` (the client reads nothing) has its
  connection aborted; the app sees a disconnect, so a streaming generation is cancelled and its
  slot freed. The kernel's send buffer is capped at `send_buffer_bytes` (otherwise Linux grows it to
  megabytes, and a client that reads nothing would hold a slot for minutes before anything stalls);
- every answer uvicorn makes itself is JSON in OpenAI's error envelope (`api/wire_errors.py`): the
  parser's 400 (a NUL byte in a header, a malformed request line), the 503 beyond
  `limit_concurrency`, the 500 for an app that ended without a response. WebSocket upgrades are off
  (``ws="none"``): modelhost serves none, so an upgrade request is an ordinary HTTP request to the app;
- a client (an IPv4 address, an IPv6 /64) may hold at most `max_unauthenticated_per_address`
  connections whose latest key check did not pass (none yet, or a wrong key): beyond, its new
  connections are closed at once, and one whose request just failed its key check is closed after
  that answer. All clients together hold at most half of `max_connections` such connections: a
  new one beyond that closes the oldest (`api/connections.py`);
- a response sent before its request's body arrived (a 401 from the key check, a 404) leaves the
  rest of the body to be discarded: it and the next request head must come within
  `header_timeout`, else the connection is closed (uvicorn would discard body bytes forever).

On SIGTERM (or SIGINT) the server stops accepting, gives running requests
`shutdown_grace_seconds` (see `InFlightRequests`), lets the lifespan settle and stop the engine,
and the process exits 0. If it has not exited `shutdown_settle_seconds` after the grace period (a
thread that never returns), `ShutdownDeadline` ends it with status 70.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from functools import partial
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelhost.api import wire_errors
from modelhost.api.connections import KEY_CHECKED, UnauthenticatedConnections
from modelhost.api.inflight import InFlightRequests
from modelhost.api.shutdown_deadline import ShutdownDeadline
from modelhost.config import Settings

logger = logging.getLogger(__name__)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a head deadline, a head-size limit, a send-stall timeout, and
    OpenAI's error envelope on the answers uvicorn gives by itself."""

    header_timeout = 10.0
    max_header_bytes = 64 * 1024
    send_timeout = 30.0
    send_buffer_bytes = 256 * 1024
    unauthenticated: UnauthenticatedConnections | None = None  # one per server (`configured`); None: no cap

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._in_head = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._discard_timer: asyncio.TimerHandle | None = None
        self._peer: str | None = None  # the client's address when unauthenticated connections are capped
        self._counted = False  # whether this connection counts as unauthenticated now
        self._lost = False

    @classmethod
    def configured(cls, settings: Settings) -> type[GuardedProtocol]:
        # The envelope overrides hook into uvicorn internals (constraints.txt pins the version they were written for).
        for name in ("send_400_response", "_start_asgi_task", "_unsupported_upgrade_warning"):
            assert hasattr(HttpToolsProtocol, name), f"uvicorn's HttpToolsProtocol has no {name}(): update api/server.py"
        assert hasattr(httptools_impl, "service_unavailable"), "uvicorn has no service_unavailable app: update api/server.py"
        return type(
            "GuardedProtocol",
            (cls,),
            {
                "header_timeout": settings.header_timeout_seconds,
                "max_header_bytes": settings.max_header_bytes,
                "send_timeout": settings.send_timeout_seconds,
                "send_buffer_bytes": settings.send_buffer_bytes,
                # Half of the connections are kept for clients with keys, however many addresses the rest come from.
                "unauthenticated": UnauthenticatedConnections(
                    settings.max_unauthenticated_per_address, total=max(1, settings.max_connections // 2)
                ),
            },
        )

    # -- the request head ------------------------------------------------------------------
    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

    def _end_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            logger.info("closing a connection that sent no complete request head in %.0f s", self.header_timeout)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
        address = self.client[0] if self.client else None
        if self.unauthenticated is not None and address is not None:
            if not self.unauthenticated.admit(address, self, self._evict):
                transport.close()  # nothing read, nothing written: its client has enough unauthenticated connections
                return
            self._peer = address
            self._counted = True
        self._start_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._cancel_discard()
        if self._peer is not None:
            # ASGI types every extension as a dict; this one is the callback the app calls (api/connections.py).
            self.scope.setdefault("extensions", {})[KEY_CHECKED] = self._key_checked  # type: ignore[assignment]
        if not self._in_head:
            self._start_head()

    # -- unauthenticated connections -------------------------------------------------------
    def _key_checked(self, passed: bool) -> bool:
        """The middleware checked the key of a request on this connection; False: close it after this answer.

        Passed: the connection stops counting as unauthenticated. Failed: it counts again (a key
        that worked once must not make a connection free to hold with wrong keys), and when its
        client has no room left for it, it is closed once this answer is sent.
        """
        assert self._peer is not None and self.unauthenticated is not None, "set only where connections are capped"
        if self._lost or self.transport.is_closing():
            return False  # closed or closing: it must not be counted again, nothing would release it
        if passed:
            self._uncount()
            return True
        if not self._counted:
            self._counted = self.unauthenticated.admit(self._peer, self, self._evict)
        return self._counted

    def _uncount(self) -> None:
        if self._counted and self.unauthenticated is not None:
            self.unauthenticated.release(self)
        self._counted = False

    def _evict(self) -> None:
        """The oldest unauthenticated connection when all clients together are at their cap: closed for a newer one."""
        self._counted = False  # already released by the caller
        if not self.transport.is_closing():
            self.transport.close()

    # -- a body answered before it arrived -------------------------------------------------
    def on_response_complete(self) -> None:
        # With requests queued behind it (pipelining), the answered request's body was complete.
        answered_early = not self.pipeline and self.cycle is not None and self.cycle.more_body
        super().on_response_complete()
        if answered_early and not self.transport.is_closing():
            self._cancel_discard()
            self._discard_timer = self.loop.call_later(self.header_timeout, self._discard_expired)

    def _cancel_discard(self) -> None:
        if self._discard_timer is not None:
            self._discard_timer.cancel()
            self._discard_timer = None

    def _discard_expired(self) -> None:
        self._discard_timer = None
        if not self.transport.is_closing():
            logger.info(
                "closing a connection whose answered request's body and next head did not come in %.0f s", self.header_timeout
            )
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._end_head()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._end_head()
            self.transport.write(wire_errors.raw_response(wire_errors.HEADERS_TOO_LARGE))
            self.transport.close()

    # -- uvicorn's own answers, in OpenAI's envelope ---------------------------------------
    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(wire_errors.raw_response(wire_errors.INVALID_HTTP))
            self.transport.close()

    def _start_asgi_task(self, cycle: httptools_impl.RequestResponseCycle, app: object) -> None:
        if app is httptools_impl.service_unavailable:  # beyond limit_concurrency
            app = wire_errors.overloaded_app
        cycle.send_500_response = partial(wire_errors.send_500, cycle)  # type: ignore[method-assign]
        super()._start_asgi_task(cycle, app)  # type: ignore[arg-type]

    def _unsupported_upgrade_warning(self) -> None:
        # Any client can send `Upgrade:`; with WebSockets off that is an ordinary request, not a warning.
        logger.debug("a request asked for a protocol upgrade; answering it as plain HTTP")

    # -- a client that stops reading -------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.send_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        logger.info("aborting a connection whose client read nothing for %.0f s", self.send_timeout)
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._stall_timer, self._discard_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._stall_timer = self._discard_timer = None
        self._lost = True
        self._uncount()  # closed: it no longer counts
        super().connection_lost(exc)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose shutdown first gives running requests a deadline, and the process a hard one."""

    def __init__(
        self, config: uvicorn.Config, *, inflight: InFlightRequests, grace: float, deadline: ShutdownDeadline | None = None
    ) -> None:
        super().__init__(config)
        self._inflight = inflight
        self._grace = grace
        self._deadline = deadline

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._deadline is not None:
            self._deadline.arm()  # first, so that nothing the shutdown then waits for can keep the process alive
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if len(self._inflight):
            logger.warning("shutting down: %d requests running, %g s to finish", len(self._inflight), self._grace)
        self._inflight.begin_drain(self._grace)
        await super().shutdown(sockets)


def _after_shutdown(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the signal that stopped it; by then the shutdown was graceful, so exit 0."""


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    """How uvicorn serves `app`: our protocol and limits (tests serve small apps with the same)."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        http=GuardedProtocol.configured(settings),
        ws="none",  # no WebSocket routes: an upgrade request is answered as plain HTTP, in the envelope
        log_config=None,  # our handlers (modelhost.observability.configure_logging) format every record
        log_level="warning",
        access_log=False,  # modelhost.access writes one JSON line per request instead
        server_header=False,
        timeout_keep_alive=5,
        limit_concurrency=settings.max_connections,
        # A backstop only: InFlightRequests cuts requests at the grace deadline, this cancels what is left
        # (before ShutdownDeadline ends the process at grace + settle).
        # Annotated int, but uvicorn only hands it to asyncio.wait_for, which takes fractions of a second.
        timeout_graceful_shutdown=settings.shutdown_grace_seconds + min(15.0, settings.shutdown_settle_seconds / 2),  # type: ignore[arg-type]
    )


def run_server(app: FastAPI, settings: Settings) -> None:
    """Serve `app` on ``settings.host:settings.port`` until SIGTERM/SIGINT, then drain and return."""
    inflight: InFlightRequests = app.state.inflight
    deadline = ShutdownDeadline(settings.shutdown_grace_seconds + settings.shutdown_settle_seconds)
    server = DrainingServer(
        uvicorn_config(app, settings), inflight=inflight, grace=settings.shutdown_grace_seconds, deadline=deadline
    )
    signal.signal(signal.SIGTERM, _after_shutdown)
    signal.signal(signal.SIGINT, _after_shutdown)
    server.run()
