"""`UnauthenticatedConnections` (api/connections.py): a cap per client address, released on close or authentication."""

from __future__ import annotations

import logging

import pytest

from modelhost.api.connections import UnauthenticatedConnections


def test_each_address_gets_its_own_cap() -> None:
    clients = UnauthenticatedConnections(per_address=2)
    assert [clients.admit("10.0.0.7") for _ in range(3)] == [True, True, False]
    assert clients.admit("10.0.0.8")
    assert clients.count("10.0.0.7") == 2 and clients.count("10.0.0.8") == 1


def test_a_released_place_can_be_taken_again_and_nothing_leaks() -> None:
    clients = UnauthenticatedConnections(per_address=1)
    assert clients.admit("::1") and not clients.admit("::1")
    clients.release("::1")
    assert clients.count("::1") == 0 and clients.admit("::1")
    clients.release("::1")
    clients.release("::1")  # released twice (closed after authenticating): never below zero
    assert clients.count("::1") == 0 and clients.admit("::1")


def test_zero_means_no_cap() -> None:
    clients = UnauthenticatedConnections(per_address=0)
    assert all(clients.admit("10.0.0.7") for _ in range(10_000))


def test_a_flood_of_refusals_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    clients = UnauthenticatedConnections(per_address=1)
    clients.admit("10.0.0.7")
    with caplog.at_level(logging.WARNING, logger="modelhost.api.connections"):
        for _ in range(500):
            assert not clients.admit("10.0.0.7")
    assert len(caplog.records) == 1 and "10.0.0.7" in caplog.text
