"""`database`: a freshly migrated store on SQLite and on PostgreSQL, for tests that must hold on both.

PostgreSQL gets a schema of its own per test (dropped after), so other tests' tables are never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelhost.store import migrate, open_engine, session_factory
from store.databases import Database, database_url, drop_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url, schema = database_url(request.param, tmp_path)
    engine = open_engine(url)
    try:
        migrate(engine)
        yield Database(request.param, url, engine, session_factory(engine))
    finally:
        engine.dispose()
        drop_schema(schema)
