"""The requests being answered now, each with its cancel scope, so shutdown can give them a deadline.

``begin_drain(grace)`` is called when the server stops accepting: every running request (and any
that still arrives on an open connection) must end within `grace` seconds; past it, its scope is
cancelled — which is an anyio cancellation, so the shielded ledger write of a generation still
completes — and the middleware ends the response in OpenAI's shape.
"""

from __future__ import annotations

import anyio


class InFlightRequests:
    """``add(scope)`` / ``discard(scope)`` per request; ``begin_drain(grace)`` once, at shutdown."""

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self._drain_deadline: float | None = None

    @property
    def draining(self) -> bool:
        return self._drain_deadline is not None

    def __len__(self) -> int:
        return len(self._scopes)

    def add(self, scope: anyio.CancelScope) -> None:
        if self._drain_deadline is not None:
            scope.deadline = min(scope.deadline, self._drain_deadline)
        self._scopes.add(scope)

    def discard(self, scope: anyio.CancelScope) -> None:
        self._scopes.discard(scope)

    def begin_drain(self, grace: float) -> None:
        """From now on every request has at most `grace` seconds left (call on the event loop)."""
        deadline = anyio.current_time() + grace
        self._drain_deadline = deadline if self._drain_deadline is None else min(deadline, self._drain_deadline)
        for scope in list(self._scopes):
            scope.deadline = min(scope.deadline, self._drain_deadline)
