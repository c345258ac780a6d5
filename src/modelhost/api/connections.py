"""Per client address, the open connections that have not yet presented a valid key.

Authentication reads only headers (`api/keygate.py`), so an unauthenticated client costs a
connection for as long as its request head takes (`HEADER_TIMEOUT_SECONDS`) and then a 401; what
it can still do is hold many such connections at once and crowd everyone else out of
`MAX_CONNECTIONS`. `UnauthenticatedConnections` caps that per address: `api/server.py`'s protocol
calls `admit(address)` when a connection opens (False: it is closed at once, nothing read or
written) and `release(address)` when it closes or when the middleware reports that a request on it
authenticated, through the callable it puts in the request's ASGI scope under
``scope["extensions"][AUTHENTICATED]``. Honest clients send their key with their first request, so
their connections count only for the milliseconds before it is checked::

    clients = UnauthenticatedConnections(per_address=2)
    clients.admit("10.0.0.7"), clients.admit("10.0.0.7"), clients.admit("10.0.0.7")  # True, True, False
    clients.release("10.0.0.7"); clients.admit("10.0.0.7")                            # True

The address is the TCP peer, never a forwarded-for header a client can write itself; behind a
reverse proxy every client shares the proxy's address, so raise the cap (or set 0) there.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

AUTHENTICATED = "modelhost.authenticated"  # scope["extensions"] key: call it once a request on the connection authenticated
_LOG_EVERY_SECONDS = 10.0


class UnauthenticatedConnections:
    """Counts unauthenticated connections per client address and refuses those beyond `per_address` (0: no cap)."""

    def __init__(self, per_address: int) -> None:
        assert per_address >= 0, "per_address is a count (0: no cap)"
        self.per_address = per_address
        self._open: dict[str, int] = {}
        self._refused = 0
        self._logged_at = 0.0

    def count(self, address: str) -> int:
        return self._open.get(address, 0)

    def admit(self, address: str) -> bool:
        """Count one more connection of `address`; False (and nothing counted) when it already has `per_address`."""
        held = self._open.get(address, 0)
        if self.per_address and held >= self.per_address:
            self._note_refusal(address)
            return False
        self._open[address] = held + 1
        return True

    def release(self, address: str) -> None:
        """One connection of `address` closed or authenticated."""
        held = self._open.get(address, 0) - 1
        if held > 0:
            self._open[address] = held
        else:
            self._open.pop(address, None)

    def _note_refusal(self, address: str) -> None:
        # One line per burst, not per connection: a flood must not become a flood of log lines.
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_SECONDS:
            logger.warning(
                "closed %d new connection(s) at once: address %s already holds %d connections that presented no "
                "valid key (MODELHOST_MAX_UNAUTHENTICATED_PER_ADDRESS)",
                self._refused,
                address,
                self.per_address,
            )
            self._refused = 0
            self._logged_at = now
