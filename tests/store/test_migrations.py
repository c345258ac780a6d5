"""The migration history is one line, and databases migrated by the old two-branch history still upgrade.

Until issue #13, 0002_admin and 0003_limits both followed 0001 and 0004_hardening joined them. A
database could be left by that history at {0002_admin, 0003_limits} (both branch heads) or at
0004_hardening; `stamped` rebuilds such a database with today's migrations plus the version rows
the old history wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from modelhost.store import migrate, open_engine
from modelhost.store.db import _alembic_config, migration_heads
from modelhost.store.schema import Base
from store.databases import database_url, drop_schema


@contextmanager
def empty_database(kind: str, folder: Path) -> Iterator[Engine]:
    """An engine on an empty database (PostgreSQL: a schema of its own, dropped after)."""
    folder.mkdir(exist_ok=True)
    url, schema = database_url(kind, folder)
    engine = open_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        drop_schema(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path / "db") as engine:
        yield engine


def versions(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return {row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))}


def as_text(described: Any) -> str:
    return json.dumps(described, sort_keys=True, default=str)  # a partial index's WHERE clause as its SQL


def schema_of(engine: Engine) -> dict[str, Any]:
    """Tables, columns, keys and indexes as the database reports them, comparable between databases."""
    inspector = inspect(engine)
    return {
        table: {
            "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in inspector.get_columns(table)],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "foreign_keys": sorted(as_text(fk) for fk in inspector.get_foreign_keys(table)),
            "unique": sorted(as_text(u) for u in inspector.get_unique_constraints(table)),
            "indexes": sorted(as_text(i) for i in inspector.get_indexes(table)),
        }
        for table in sorted(inspector.get_table_names())
    }


def stamped(engine: Engine, revision: str, old_rows: set[str]) -> None:
    """Migrate `engine` to `revision`, then leave in `alembic_version` the rows the old history wrote there."""
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.execute(text("DELETE FROM alembic_version"))
        for row in sorted(old_rows):
            connection.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": row})


def test_migration_history_is_one_line() -> None:
    script = ScriptDirectory.from_config(_alembic_config())
    revisions = list(script.walk_revisions())
    in_order = [r.revision for r in reversed(revisions)]
    assert in_order[:4] == ["0001", "0002_admin", "0003_limits", "0004_hardening"]
    assert all(not r.is_merge_point and not r.is_branch_point for r in revisions)
    assert [r.down_revision for r in reversed(revisions)] == [None, *in_order[:-1]]  # each follows the one before
    assert migration_heads() == {in_order[-1]}


def test_fresh_database_migrates_to_the_one_head_and_the_models_schema(empty_engine: Engine) -> None:
    migrate(empty_engine)
    assert versions(empty_engine) == migration_heads()
    with empty_engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    migrate(empty_engine)  # again: nothing to do
    assert versions(empty_engine) == migration_heads()


def test_database_at_the_old_branch_heads_upgrades_to_head(empty_engine: Engine, tmp_path: Path) -> None:
    stamped(empty_engine, "0003_limits", {"0002_admin", "0003_limits"})
    with empty_engine.begin() as connection:  # data written before the upgrade stays
        connection.execute(text("INSERT INTO organizations (id, name, created_at) VALUES ('org-old', 'Old', CURRENT_TIMESTAMP)"))

    migrate(empty_engine)

    assert versions(empty_engine) == migration_heads()
    with empty_database(empty_engine.dialect.name, tmp_path / "fresh") as fresh:
        migrate(fresh)
        assert schema_of(empty_engine) == schema_of(fresh)
    with empty_engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert connection.execute(text("SELECT name FROM organizations WHERE id = 'org-old'")).scalar_one() == "Old"


def test_database_at_the_old_merge_revision_upgrades_like_any_other(empty_engine: Engine, tmp_path: Path) -> None:
    stamped(empty_engine, "0004_hardening", {"0004_hardening"})

    migrate(empty_engine)

    assert versions(empty_engine) == migration_heads()
    with empty_database(empty_engine.dialect.name, tmp_path / "fresh") as fresh:
        migrate(fresh)
        assert schema_of(empty_engine) == schema_of(fresh)


def test_a_database_at_the_old_limits_branch_alone_is_refused_not_skipped_past_admin(empty_engine: Engine) -> None:
    """Under the old graph a database could be upgraded to 0003_limits alone; in the one line 0003
    follows 0002, so upgrading it would skip 0002's tables without a word. It is refused instead."""
    stamped(empty_engine, "0003_limits", {"0003_limits"})
    with empty_engine.begin() as connection:  # what the old branch alone had: no 0002_admin tables
        connection.execute(text("DROP TABLE invites"))
    with pytest.raises(RuntimeError, match="0002_admin"):
        migrate(empty_engine)
