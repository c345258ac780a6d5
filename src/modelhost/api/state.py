"""What the app is made of, built once in the lifespan and passed to routes through `app.state`."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine as SqlEngine
from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Authenticator
from modelhost.blobs import BlobStore
from modelhost.config import Settings
from modelhost.engine import ModelRegistry
from modelhost.limits import Limiter
from modelhost.observability import Observability
from modelhost.pipeline import Pipeline
from modelhost.pipeline.ledger_writer import LedgerWriter
from modelhost.store import UsageLedger


@dataclass
class AppState:
    settings: Settings
    database: SqlEngine
    sessions: sessionmaker[Session]
    authenticator: Authenticator
    ledger: UsageLedger
    ledger_writer: LedgerWriter  # the request path's writes to `ledger`: pending rows, retried settlement
    registry: ModelRegistry
    pipeline: Pipeline
    limiter: Limiter
    blobs: BlobStore  # the bytes of files and upload parts (blobs/open.py)
    observability: Observability = field(default_factory=lambda: Observability(access_log=False))
