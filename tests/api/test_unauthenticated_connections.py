"""`UnauthenticatedConnections` (api/connections.py): a cap per client (an IPv4 address, an IPv6 /64)
and one for all clients together, released on close or authentication."""

from __future__ import annotations

import itertools
import logging

import pytest

from modelhost.api.connections import UnauthenticatedConnections, client_of


class Connection:
    """A connection as the registry sees it: something to count, and its `close()` for eviction."""

    _ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def admit(clients: UnauthenticatedConnections, address: str) -> Connection | None:
    """A new connection of `address`, or None when it was refused."""
    connection = Connection()
    return connection if clients.admit(address, connection, connection.close) else None


def test_each_address_gets_its_own_cap() -> None:
    clients = UnauthenticatedConnections(per_address=2)
    assert [admit(clients, "10.0.0.7") is not None for _ in range(3)] == [True, True, False]
    assert admit(clients, "10.0.0.8")
    assert clients.count("10.0.0.7") == 2 and clients.count("10.0.0.8") == 1


def test_an_ipv6_client_is_its_slash_64_and_a_mapped_ipv4_peer_its_ipv4_address() -> None:
    assert client_of("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == client_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_of("2001:db8:1:3::1") == "2001:db8:1:3::/64"  # the next /64 is another client
    assert client_of("fe80::1%eth0") == "fe80::/64"
    assert client_of("::ffff:10.0.0.7") == client_of("10.0.0.7") == "10.0.0.7"
    assert client_of("/run/modelhost.sock") == "/run/modelhost.sock"  # not an IP address: itself

    clients = UnauthenticatedConnections(per_address=3)
    # One host with a /64 picks a new source address for every connection: still one client.
    opened = [admit(clients, f"2001:db8:1:2::{i:x}") for i in range(1, 5)]
    assert [c is not None for c in opened] == [True, True, True, False]
    assert admit(clients, "2001:db8:1:3::1")
    assert all([admit(clients, "::ffff:10.0.0.7"), admit(clients, "10.0.0.7"), admit(clients, "::ffff:10.0.0.7")])
    assert not admit(clients, "10.0.0.7")
    clients.release(opened[0])
    assert clients.count("2001:db8:1:2::ffff") == 2 and admit(clients, "2001:db8:1:2::abcd")


def test_past_the_total_the_oldest_unauthenticated_connection_makes_room() -> None:
    """Many addresses, each within its own cap, hold at most `total`; a newcomer is never refused for it."""
    clients = UnauthenticatedConnections(per_address=2, total=4)
    crowd = [admit(clients, f"10.0.{i}.1") for i in range(4)]
    assert all(crowd) and clients.held == 4
    newcomer = admit(clients, "2001:db8::1")  # an honest client's new connection still gets in ...
    assert newcomer is not None and clients.held == 4
    assert [c.closed for c in crowd if c] == [True, False, False, False]  # ... and the oldest was closed
    assert clients.count("10.0.0.1") == 0
    clients.release(crowd[0])  # its close arrives later: nothing more is released
    assert clients.held == 4 and clients.count("2001:db8::1") == 1
    clients.release(newcomer)  # it authenticated: it no longer counts, and is never evicted
    more = [admit(clients, f"10.1.{i}.1") for i in range(2)]
    assert not newcomer.closed and [c.closed for c in crowd if c] == [True, True, False, False]
    assert all(more) and clients.held == 4
    # Behind a proxy (no cap per client) the total still holds.
    proxied = UnauthenticatedConnections(per_address=0, total=3)
    behind = [admit(proxied, "127.0.0.1") for _ in range(5)]
    assert proxied.held == 3 and [c.closed for c in behind if c] == [True, True, False, False, False]


def test_a_released_place_can_be_taken_again_and_nothing_leaks() -> None:
    clients = UnauthenticatedConnections(per_address=1, total=1)
    first = admit(clients, "::1")
    assert first is not None and not admit(clients, "::1")
    clients.release(first)
    assert clients.count("::1") == 0 and clients.held == 0
    second = admit(clients, "::1")
    assert second is not None
    clients.release(second)
    clients.release(second)  # a release without its admit: never below zero, nor a place in the total
    clients.release(first)
    assert clients.count("::1") == 0 and clients.held == 0
    again = admit(clients, "::1")
    assert again is not None and clients.held == 1


def test_zero_means_no_cap() -> None:
    clients = UnauthenticatedConnections(per_address=0)
    assert all(admit(clients, "10.0.0.7") for _ in range(10_000))


def test_a_flood_of_refusals_and_evictions_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    clients = UnauthenticatedConnections(per_address=1, total=2)
    admit(clients, "10.0.0.7")
    with caplog.at_level(logging.WARNING, logger="modelhost.api.connections"):
        for _ in range(500):
            assert not admit(clients, "10.0.0.7")
        for i in range(500):
            assert admit(clients, f"10.1.{i // 250}.{i % 250}")  # each closes the oldest
    assert len(caplog.records) == 1 and "10.0.0.7" in caplog.text
