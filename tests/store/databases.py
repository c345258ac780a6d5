"""Empty databases of each kind the store supports, and `database`, the fixture of a migrated one of each kind.

A test module outside tests/store/ imports the fixture: ``from store.databases import database  # noqa: F401``.

PostgreSQL gets a schema of its own per test (dropped after), so other tests' tables are never touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from modelhost.store import migrate, open_engine, session_factory

POSTGRES_URL = os.environ.get("MODELHOST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Database:
    kind: str
    url: str
    engine: Engine
    sessions: sessionmaker[Session]


def database_url(kind: str, tmp_path: Path) -> tuple[str, str | None]:
    """(url, postgres schema to drop afterwards) of an empty database of `kind`."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}", None
    schema = f"mh_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", schema


def drop_schema(schema: str | None) -> None:
    if schema is not None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database of each kind (the test runs once on each)."""
    url, schema = database_url(request.param, tmp_path)
    engine = open_engine(url)
    try:
        migrate(engine)
        yield Database(request.param, url, engine, session_factory(engine))
    finally:
        engine.dispose()
        drop_schema(schema)
