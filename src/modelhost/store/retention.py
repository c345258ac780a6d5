"""The retention sweep: stored objects whose `expires_at` has passed are deleted.

Each store module of stored objects has `purge_expired(session, now) -> int` (its top-level
objects deleted, with their child rows). `purge_expired(sessions, now)` runs them all, each in its
own transaction, so one kind's failure does not keep the others. Every replica runs it (api/app.py,
every `Settings.stored_objects_sweep_seconds`): deleting what has expired is idempotent, and an
object past its `expires_at` is deleted whichever replica gets there first.

    purge_expired(sessions, datetime.now(timezone.utc))   # {"chat_completions": 3, "conversations": 0, "responses": 1}
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from modelhost.store import chat_completions, conversations, files, responses

Purge = Callable[[Session, datetime], int]

PURGES: dict[str, Purge] = {
    "chat_completions": chat_completions.purge_expired,
    "conversations": conversations.purge_expired,
    "responses": responses.purge_expired,
    # Marks expired files and uploads; their blobs are removed by the files sweep (files/sweep.py).
    "files": files.purge_expired,
}


def purge_expired(sessions: sessionmaker[Session], now: datetime) -> dict[str, int]:
    """Delete every stored object that expired at or before `now` (timezone-aware); how many of each kind went."""
    assert now.tzinfo is not None, "stored times are timezone-aware; give `now` a timezone"
    deleted: dict[str, int] = {}
    for kind, purge in PURGES.items():
        with sessions() as session:
            deleted[kind] = purge(session, now)
            session.commit()
    return deleted
