"""The open connections that have not presented a valid key: capped per client, and all together.

Authentication reads only headers (`api/keygate.py`), so an unauthenticated client costs a
connection for as long as its request head takes (`HEADER_TIMEOUT_SECONDS`) and then a 401; what
it can still do is hold many such connections at once and crowd everyone else out of
`MAX_CONNECTIONS`. `UnauthenticatedConnections` bounds that twice:

- per client (`per_address`): an IPv4 address, or an IPv6 /64 — one host is routinely given a
  whole /64, so counting each IPv6 address alone would be no cap at all. An IPv4 peer seen on a
  dual-stack socket (``::ffff:10.0.0.7``) is its IPv4 address. A client at its cap has its new
  connections closed at once;
- all clients together (`total`, half of `MAX_CONNECTIONS` as `api/server.py` configures it), so
  that many addresses (a botnet, a whole /48) can never take the other half, where connections
  that authenticated keep their room. Every new connection is unauthenticated until its first
  head arrives, so refusing new ones once the total is reached would lock out every new client,
  honest ones too: instead the oldest unauthenticated connection is closed to make room. An
  honest client authenticates within a round trip and stops counting; to push it out, others
  would have to open `total` connections within that round trip.

`api/server.py`'s protocol calls `admit(address, connection, evict)` when a connection opens
(False: it is closed at once, nothing read or written; `evict()` closes it later if it becomes
the oldest to go) and `release(connection)` when it closes. In between the middleware reports each
key check through the callable the protocol puts in the request's ASGI scope under
``scope["extensions"][KEY_CHECKED]``: a request that passed makes the connection stop counting
(`release`); one that failed makes it count again (`admit`), so a keep-alive connection that
authenticated once cannot then be held with wrong keys (and, when its client has no room left, it
is closed after that answer). Honest clients send their key with their first request, so their
connections count only for the milliseconds before it is checked::

    clients = UnauthenticatedConnections(per_address=2, total=3)
    [clients.admit("10.0.0.7", c, c.close) for c in (a, b, c)]  # [True, True, False]: 10.0.0.7 is at its cap
    clients.admit("2001:db8::1", d, d.close)                     # True: 3 in all now
    clients.admit("2001:db8::2:3", e, e.close)                   # True, and a.close() was called (the oldest)
    clients.release(b); clients.count("10.0.0.7")                # 0

The address is the TCP peer, never a forwarded-for header a client can write itself; behind a
reverse proxy every client shares the proxy's address, so set the per-address cap to 0 there
(docs/scaling.md, section 5); the total still holds.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import time
from collections.abc import Callable, Hashable

logger = logging.getLogger(__name__)

# scope["extensions"] key: call it with whether a request on the connection passed its key check; it
# returns False when the connection must close after this answer (it failed, and its client has no room).
KEY_CHECKED = "modelhost.key_checked"
IPV6_CLIENT_PREFIX = 64  # the prefix one IPv6 client is counted by (one site or host gets a /64)
_LOG_EVERY_SECONDS = 10.0


def client_of(address: str) -> str:
    """Who `address` counts as: an IPv4 address itself, an IPv6 address its /64, anything else as given."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a link-local peer may carry a %zone
    except ValueError:
        return address  # not an IP address (a Unix socket): one client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


class UnauthenticatedConnections:
    """Counts unauthenticated connections per client and in all: refuses a client's beyond
    `per_address`, and makes room beyond `total` by evicting the oldest (either 0: no cap of that kind)."""

    def __init__(self, per_address: int, total: int = 0) -> None:
        assert per_address >= 0 and total >= 0, "caps are counts (0: no cap)"
        self.per_address = per_address
        self.total = total
        self._open: collections.OrderedDict[Hashable, tuple[str, Callable[[], None]]] = collections.OrderedDict()  # oldest first
        self._per_client: dict[str, int] = {}
        self._refused = self._evicted = 0
        self._logged_at = 0.0

    @property
    def held(self) -> int:
        """Unauthenticated connections open now, all clients together."""
        return len(self._open)

    def count(self, address: str) -> int:
        return self._per_client.get(client_of(address), 0)

    def admit(self, address: str, connection: Hashable, evict: Callable[[], None]) -> bool:
        """Count `connection` (of `address`) as unauthenticated; False (nothing counted) when its client is at its cap.

        At the total, the oldest unauthenticated connection is released and `evict`ed (its own
        callable, which closes it) to make room.
        """
        assert connection not in self._open, "a connection is admitted once until it is released"
        client = client_of(address)
        held = self._per_client.get(client, 0)
        if self.per_address and held >= self.per_address:
            self._refused += 1
            self._log(client)
            return False
        if self.total and len(self._open) >= self.total:
            oldest, (_, close) = next(iter(self._open.items()))
            self.release(oldest)
            self._evicted += 1
            self._log(None)
            close()
        self._open[connection] = (client, evict)
        self._per_client[client] = held + 1
        return True

    def release(self, connection: Hashable) -> None:
        """`connection` closed or authenticated (a release without its admit changes nothing)."""
        entry = self._open.pop(connection, None)
        if entry is None:
            return
        client = entry[0]
        held = self._per_client[client] - 1
        if held > 0:
            self._per_client[client] = held
        else:
            del self._per_client[client]

    def _log(self, client: str | None) -> None:
        """`client`: the one at its cap; None: all clients together were at theirs."""
        # One line per burst, not per connection: a flood must not become a flood of log lines.
        now = time.monotonic()
        if now - self._logged_at < _LOG_EVERY_SECONDS:
            return
        if client is not None:
            why = f"client {client} holds {self.per_address} (MODELHOST_MAX_UNAUTHENTICATED_PER_ADDRESS)"
        else:
            why = f"all clients together hold {self.total} (half of MODELHOST_MAX_CONNECTIONS)"
        logger.warning(
            "connections that presented no valid key: %d new one(s) refused (their client was at its cap), %d of the "
            "oldest closed to make room (all clients were at theirs); now %s",
            self._refused,
            self._evicted,
            why,
        )
        self._refused = self._evicted = 0
        self._logged_at = now
