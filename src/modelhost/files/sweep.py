"""The files sweep: blobs of deleted or expired files and of finished uploads' parts are removed.

The retention sweep (store/retention.py, `store.files.purge_expired`) marks what expired in the
database; this removes the bytes, then the rows, so a blob goes only once no row shows it and a
row goes only once its blob is gone (a failure leaves both for the next round). Every replica may
run it: deleting a blob twice is not an error. api/app.py runs it with the retention sweep.
"""

from __future__ import annotations

import logging

import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

from modelhost.blobs import BlobStore
from modelhost.store import files as store

logger = logging.getLogger(__name__)


def _pending_blobs(sessions: sessionmaker[Session]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    with sessions() as session:
        return store.deleted_files(session), store.finished_parts(session)


def _forget(sessions: sessionmaker[Session], file_ids: list[str], part_ids: list[str]) -> None:
    with sessions() as session:
        if file_ids:
            store.remove_files(session, file_ids)
        if part_ids:
            store.remove_parts(session, part_ids)
        session.commit()


async def sweep_blobs(sessions: sessionmaker[Session], blobs: BlobStore, *, rounds: int = 20) -> dict[str, int]:
    """Remove the blobs no file or pending upload needs, `store.SWEEP_BATCH` at a time, at most `rounds`
    batches (the next sweep goes on); how many files' and parts' blobs went."""
    removed = {"files": 0, "upload_parts": 0}
    for _ in range(rounds):
        found = await _sweep_round(sessions, blobs)
        removed = {kind: removed[kind] + found[kind] for kind in removed}
        if max(found.values()) < store.SWEEP_BATCH:
            break
    return removed


async def _sweep_round(sessions: sessionmaker[Session], blobs: BlobStore) -> dict[str, int]:
    files, parts = await anyio.to_thread.run_sync(_pending_blobs, sessions)
    gone_files: list[str] = []
    gone_parts: list[str] = []
    for ids, found in ((gone_files, files), (gone_parts, parts)):
        for ident, key in found:
            try:
                await blobs.delete(key)
            except Exception:
                logger.warning("could not remove blob %s; will retry", key, exc_info=True)
                continue
            ids.append(ident)
    if gone_files or gone_parts:
        await anyio.to_thread.run_sync(_forget, sessions, gone_files, gone_parts)
    return {"files": len(gone_files), "upload_parts": len(gone_parts)}
