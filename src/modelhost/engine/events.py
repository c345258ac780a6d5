"""The event queue every engine hands its events through, and the one way to read it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from modelhost.engine.base import EngineEvent

END = object()  # put on the queue last: no more events


async def read_events(events: asyncio.Queue[object]) -> AsyncIterator[EngineEvent]:
    """Yield events until `END`; an exception put on the queue is raised here."""
    while True:
        item = await events.get()
        if item is END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item  # type: ignore[misc]
