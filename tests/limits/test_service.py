"""Rate-limit and quota settings in the store (SQLite and PostgreSQL), through the service the CLI
and the Administration API share."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session, sessionmaker

from modelhost.config import ModelPrice, Settings
from modelhost.errors import InvalidRequest, NotFound
from modelhost.limits.service import LimitSettings
from modelhost.organization import Scope as AdminScope
from modelhost.store import UsageEntry, UsageLedger, migrate, open_engine, session_factory
from modelhost.store import limits as stored
from modelhost.store import tenancy
from modelhost.store.db import _MIGRATIONS
from modelhost.store.schema import AuditLogEntry

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
MODEL = "chat-model"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    name = f"modelhost_limits_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = open_engine(database_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def tenancy_ids(sessions: sessionmaker[Session]) -> tuple[str, str]:
    with sessions() as session:
        org = tenancy.create_organization(session, "Acme")
        project = tenancy.create_project(session, org.id, "Shop")
        session.commit()
        return org.id, project.id


def service(sessions: sessionmaker[Session], **settings: object) -> LimitSettings:
    return LimitSettings(sessions, Settings(**settings), [MODEL])  # type: ignore[arg-type]


def test_the_migration_adds_its_tables_beside_other_branches_and_can_be_undone(database_url: str) -> None:
    engine = open_engine(database_url)
    migrate(engine)
    assert {"rate_limits", "quotas", "usage_records"} <= set(inspect(engine).get_table_names())
    sessions = session_factory(engine)
    with sessions() as session:
        org = tenancy.create_organization(session, "Migrated")
        project = tenancy.create_project(session, org.id, "P")
        for who, rpm in (("operator", 60), ("admin", 30)):  # one row each for the same project and model
            stored.put_rate_limit(session, organization_id=org.id, scope="project", scope_id=project.id, model=MODEL,
                                  values={"max_requests_per_1_minute": rpm}, set_by=who)
        session.commit()
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))

    def downgrade(target: str) -> None:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, target)

    downgrade("0003_limits")  # 0004_hardening's admin rows go; the operator's stay
    assert "set_by" not in {c["name"] for c in inspect(engine).get_columns("rate_limits")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT max_requests_per_1_minute FROM rate_limits")).scalars().all() == [60]
    migrate(engine)
    with sessions() as session:
        assert [(r.set_by, r.max_requests_per_1_minute) for r in stored.rate_limits_of(session, "project", project.id)] == [
            ("operator", 60)
        ]
    downgrade("0001")
    tables = set(inspect(engine).get_table_names())
    assert "rate_limits" not in tables and "quotas" not in tables and "usage_records" in tables
    migrate(engine)  # and back
    assert "quotas" in inspect(engine).get_table_names()
    engine.dispose()


def test_rate_limits_are_set_per_scope_and_resolve_per_model(
    sessions: sessionmaker[Session], tenancy_ids: tuple[str, str]
) -> None:
    org, project = tenancy_ids
    limits = service(sessions, rate_limit_requests_per_minute=500, rate_limit_tokens_per_minute=9000)
    limits.set_rate_limits(limits.scope(organization=org), {"max_requests_per_1_minute": 60, "max_concurrent_requests": 4})
    row = limits.set_rate_limits(limits.scope(project=project), {"max_tokens_per_1_minute": 1000}, model=MODEL)
    assert row["scope"] == "project" and row["model"] == MODEL and row["max_requests_per_1_minute"] is None
    effective = limits.show_rate_limits(limits.scope(project=project))["effective"]
    assert effective == [
        {
            "model": MODEL,
            "max_requests_per_1_minute": 60,
            "max_tokens_per_1_minute": 1000,
            "max_requests_per_1_day": 0,
            "max_concurrent_requests": 4,
            "batch_1_day_max_input_tokens": 0,
            "source": {
                "max_requests_per_1_minute": f"organization {org} (all models)",
                "max_tokens_per_1_minute": f"project {project} ({MODEL})",
                "max_requests_per_1_day": "settings",
                "max_concurrent_requests": f"organization {org} (all models)",
                "batch_1_day_max_input_tokens": "settings",
            },
        }
    ]
    # None goes back to inheriting.
    limits.set_rate_limits(limits.scope(project=project), {"max_tokens_per_1_minute": None}, model=MODEL)
    again = limits.show_rate_limits(limits.scope(project=project))["effective"]
    assert again[0]["max_tokens_per_1_minute"] == 9000  # type: ignore[index]
    assert len(limits.show_rate_limits(None)["configured"]) == 2  # type: ignore[arg-type]


def test_bad_rate_limit_values_are_refused(sessions: sessionmaker[Session], tenancy_ids: tuple[str, str]) -> None:
    org, project = tenancy_ids
    limits = service(sessions)
    with pytest.raises(InvalidRequest):
        limits.set_rate_limits(limits.scope(project=project), {"max_requests_per_1_minute": -1})
    with pytest.raises(InvalidRequest):
        limits.set_rate_limits(limits.scope(project=project), {"max_concurrent_requests": 2}, model=MODEL)
    with pytest.raises(NotFound):
        limits.scope(project="proj_nope")
    with pytest.raises(InvalidRequest):
        limits.scope()


def test_admin_update_changes_the_project_and_audits_it(
    sessions: sessionmaker[Session], tenancy_ids: tuple[str, str]
) -> None:
    org, project = tenancy_ids
    limits = service(sessions)
    objects = limits.project_rate_limits(org, project)
    assert objects == [
        {
            "object": "project.rate_limit",
            "id": f"rl-{MODEL}",
            "model": MODEL,
            "max_requests_per_1_minute": 10_000,
            "max_tokens_per_1_minute": 10_000_000,
            "max_requests_per_1_day": 0,
            "batch_1_day_max_input_tokens": 0,
        }
    ]
    updated = limits.update_project_rate_limit(AdminScope(org), project, f"rl-{MODEL}", {"max_requests_per_1_day": 50})
    assert updated["max_requests_per_1_day"] == 50
    with sessions() as session:
        events = session.query(AuditLogEntry).filter_by(type="rate_limits.updated").all()
        assert [(e.project_id, e.details) for e in events] == [
            (project, {"id": f"rl-{MODEL}", "changes_requested": {"max_requests_per_1_day": 50}})
        ]
    with pytest.raises(NotFound):
        limits.update_project_rate_limit(AdminScope(org), project, "rl-unknown", {"max_requests_per_1_day": 1})
    with pytest.raises(NotFound):
        limits.project_rate_limits("org-other", project)  # another organization sees no such project


def test_an_admin_key_can_only_hold_a_project_below_what_the_operator_allows(
    sessions: sessionmaker[Session], tenancy_ids: tuple[str, str]
) -> None:
    org, project = tenancy_ids
    limits = service(sessions, rate_limit_tokens_per_minute=9000)
    admin = AdminScope(org)

    def update(**values: int) -> dict[str, object]:
        return limits.update_project_rate_limit(admin, project, f"rl-{MODEL}", values)

    def refused(**values: int) -> str:
        with pytest.raises(InvalidRequest) as error:
            update(**values)
        assert error.value.param == next(iter(values))
        return error.value.message

    limits.set_rate_limits(limits.scope(organization=org), {"max_requests_per_1_minute": 60})
    assert "0 (no limit) is above 60" in refused(max_requests_per_1_minute=0)
    assert "61 is above 60" in refused(max_requests_per_1_minute=61)
    assert "9001 is above 9000" in refused(max_tokens_per_1_minute=9001)  # the settings are the operator's too
    assert update(max_requests_per_1_minute=30)["max_requests_per_1_minute"] == 30
    assert update(max_requests_per_1_day=0)["max_requests_per_1_day"] == 0  # no limit above it: none is fine
    # The enqueued-token limit of batches is an OpenAI field like the others: stored, held below the operator's.
    limits.set_rate_limits(limits.scope(organization=org), {"batch_1_day_max_input_tokens": 1_000_000})
    assert "2000000 is above 1000000" in refused(batch_1_day_max_input_tokens=2_000_000)
    assert update(batch_1_day_max_input_tokens=500_000)["batch_1_day_max_input_tokens"] == 500_000
    # The operator's project limit is a ceiling the admin's sits beside, never overwrites.
    limits.set_rate_limits(limits.scope(project=project), {"max_requests_per_1_minute": 20}, model=MODEL)
    assert limits.project_rate_limits(org, project)[0]["max_requests_per_1_minute"] == 20
    assert "25 is above 20" in refused(max_requests_per_1_minute=25)
    assert update(max_requests_per_1_minute=10)["max_requests_per_1_minute"] == 10
    configured = limits.show_rate_limits(limits.scope(project=project))["configured"]
    assert [(r["set_by"], r["max_requests_per_1_minute"]) for r in configured] == [("operator", 20), ("admin", 10)]  # type: ignore[index]
    # The operator lowering the organization below the project's values lowers the project too.
    limits.set_rate_limits(limits.scope(organization=org), {"max_requests_per_1_minute": 5})
    assert limits.project_rate_limits(org, project)[0]["max_requests_per_1_minute"] == 5
    # …and the operator cannot lift a project above its organization either: the organization's comes first.
    with pytest.raises(InvalidRequest) as error:
        limits.set_rate_limits(limits.scope(project=project), {"max_requests_per_1_minute": 6})
    assert error.value.param == "max_requests_per_1_minute"


def test_a_project_quota_is_at_most_its_organizations(sessions: sessionmaker[Session], tenancy_ids: tuple[str, str]) -> None:
    org, project = tenancy_ids
    limits = service(sessions)
    limits.set_quota(limits.scope(organization=org), unit="usd", period="month", hard_limit="10", soft_limit=None)
    with pytest.raises(InvalidRequest) as error:
        limits.set_quota(limits.scope(project=project), unit="usd", period="month", hard_limit="10.01", soft_limit=None)
    assert error.value.param == "hard_limit"
    assert limits.set_quota(limits.scope(project=project), unit="usd", period="month", hard_limit="10", soft_limit=None)["hard_limit"] == 10.0
    # Another unit or period cannot be compared; both quotas count every request anyway.
    assert limits.set_quota(limits.scope(project=project), unit="tokens", period="day", hard_limit="10000000", soft_limit=None)


def test_quotas_in_tokens_and_dollars_show_what_was_spent(
    sessions: sessionmaker[Session], tenancy_ids: tuple[str, str]
) -> None:
    org, project = tenancy_ids
    limits = service(sessions, prices={MODEL: ModelPrice(input=2.0, output=10.0)})
    UsageLedger(sessions).record(
        UsageEntry("r1", datetime.now(timezone.utc), org, project, None, None, MODEL, "chat.completions", 1000, 500, "completed")
    )
    tokens = limits.set_quota(limits.scope(project=project), unit="tokens", period="day", hard_limit="1400", soft_limit="1000")
    assert (tokens["used"], tokens["hard_limit"], tokens["hard_limit_reached"], tokens["soft_limit_reached"]) == (1500, 1400, True, True)
    dollars = limits.set_quota(limits.scope(organization=org), unit="usd", period="month", hard_limit="$12.50", soft_limit=None)
    # 1000 × $2/M + 500 × $10/M = $0.007
    assert (dollars["used"], dollars["hard_limit"], dollars["soft_limit"]) == (0.007, 12.5, None)
    assert [q["scope"] for q in limits.show_quotas(None)] == ["organization", "project"]
    assert limits.set_quota(limits.scope(project=project), unit="tokens", period="day", hard_limit="none", soft_limit=None)["deleted"] is True
    assert limits.show_quotas(limits.scope(project=project)) == []
    for unit, amount in (("tokens", "1.5"), ("tokens", "-3"), ("usd", "lots")):
        with pytest.raises(InvalidRequest):
            limits.set_quota(limits.scope(project=project), unit=unit, period="day", hard_limit=amount, soft_limit=None)
    with pytest.raises(InvalidRequest):
        limits.set_quota(limits.scope(project=project), unit="tokens", period="year", hard_limit="1", soft_limit=None)
