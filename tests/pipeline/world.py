"""A pipeline with nothing faked but the model: a migrated SQLite store, its ledger writer, an
in-process limiter, and `ScriptedEngine` serving one model; an observer that keeps its reports."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from modelhost.auth import Principal
from modelhost.engine.registry import ServedModel
from modelhost.limits import Admission, LimitPolicy, Limiter, RateLimits
from modelhost.limits.memory import MemoryBackend
from modelhost.observability import SettlementReport
from modelhost.pipeline import Pipeline
from modelhost.pipeline.ledger_writer import LedgerWriter
from modelhost.store import UsageLedger, migrate, open_engine, session_factory
from modelhost.store import tenancy
from modelhost.store.schema import UsageRecord
from support.fake_engine import ScriptedEngine


class Observer:
    def __init__(self) -> None:
        self.reports: list[SettlementReport] = []

    def settled(self, report: SettlementReport) -> None:
        self.reports.append(report)


class World:
    def __init__(self, tmp_path: Path, engine: ScriptedEngine | None = None) -> None:
        db = open_engine(f"sqlite:///{tmp_path / 'pipeline.db'}")
        migrate(db)
        self.sessions = session_factory(db)
        with self.sessions() as session:
            org = tenancy.create_organization(session, "Pipeline")
            session.commit()
            project = tenancy.default_project(session, org.id)
            assert project is not None
            self.who = Principal(org.id, project.id, "user-1", "key_1", "project")
        self.engine = engine or ScriptedEngine()
        self.model = ServedModel(id="scripted", created=0, owned_by="test", engine=self.engine, fingerprint="fp_test")  # type: ignore[arg-type]
        ledger = UsageLedger(self.sessions)
        self.limiter = Limiter(MemoryBackend(), LimitPolicy(self.sessions, RateLimits(0, 0, 0, 0), cache_seconds=0), ledger, prices={})
        self.writer = LedgerWriter(ledger, settle_wait=1)
        self.observer = Observer()
        self.pipeline = Pipeline(self.writer, self.observer, limiter=self.limiter)

    async def admit(self, request_id: str = "req_1") -> Admission:
        return await self.limiter.admit(self.who, model=self.model.id, request_id=request_id)

    def rows(self) -> list[tuple[str, str, int, int]]:
        with self.sessions() as session:
            return [
                (r.request_id, r.outcome, r.prompt_tokens, r.completion_tokens)
                for r in session.scalars(select(UsageRecord).order_by(UsageRecord.request_id))
            ]
