"""Replicas starting at the same moment on one empty PostgreSQL database (a fleet's first rollout):
each runs the migrations and the first-start bootstrap, and all of them must come up on one schema
with one first organization. Without the advisory lock in `store.db.migrate` most of them died on a
unique violation in PostgreSQL's catalog (CREATE TABLE racing CREATE TABLE); without the retry in
`bootstrap.bootstrap` one died on the owner's unique email."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from modelhost.store.db import migration_heads
from serverproc import private_database

STARTERS = 4

# What `modelhost serve` does before it loads a model (cli.cmd_serve), in a process of its own.
START = """
import json, sys
from modelhost.organization import bootstrap
from modelhost.store import migrate, open_engine, session_factory
engine = open_engine(sys.argv[1])
migrate(engine)
first = bootstrap.bootstrap(session_factory(engine))
print(json.dumps({"created": first.created, "organization": first.organization_id}))
"""


@pytest.fixture
def empty_database() -> Iterator[str]:
    with private_database("modelhost_start") as url:
        yield url


@pytest.mark.parametrize("round_", range(3))
def test_replicas_starting_together_on_an_empty_database_all_come_up_on_one_store(empty_database: str, round_: int) -> None:
    starters = [
        subprocess.Popen([sys.executable, "-c", START, empty_database], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(STARTERS)
    ]
    results = []
    for proc in starters:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"a starter died:\n{err[-3000:]}"
        results.append(json.loads(out))
    assert sum(r["created"] for r in results) == 1
    assert len({r["organization"] for r in results}) == 1
    with psycopg.connect(empty_database) as conn:
        assert {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")} == migration_heads()
        assert conn.execute("SELECT count(*) FROM organizations").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)
