"""What the app is made of, built once in the lifespan and passed to routes through `app.state`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine as SqlEngine
from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Authenticator
from modelhost.config import Settings
from modelhost.engine import ModelRegistry
from modelhost.pipeline import GenerationPipeline
from modelhost.store import UsageLedger


@dataclass
class AppState:
    settings: Settings
    database: SqlEngine
    sessions: sessionmaker[Session]
    authenticator: Authenticator
    ledger: UsageLedger
    registry: ModelRegistry
    pipeline: GenerationPipeline
