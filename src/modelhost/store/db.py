"""Opening the store: one SQLAlchemy engine for SQLite or PostgreSQL, migrated by Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).parent / "migrations"

# The PostgreSQL advisory lock that serialises migrations between processes sharing a database
# ("modelhst" as a big-endian 64-bit integer; any key no other application on the database uses).
MIGRATION_LOCK_ID = int.from_bytes(b"modelhst", "big")


def _normalise_url(url: str) -> str:
    # Operators write postgresql://…; SQLAlchemy would pick psycopg2, we ship psycopg 3.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_engine(url: str) -> Engine:
    """Create the engine for `url`; SQLite gets WAL, foreign keys and a busy timeout."""
    url = _normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Bring the schema up to the newest revision of every migration branch (idempotent).

    On PostgreSQL the upgrade runs in one transaction holding an advisory lock, so replicas
    starting together on one database take turns: the first creates or upgrades the schema, the
    others wait for its commit, then find it at the newest revision and change nothing. (Without
    the lock they would race to CREATE the same tables and all but one would die on a unique
    violation.) The lock is released with the transaction, also when the process dies. SQLite is
    one file on one host: its migrations are not run by several servers at once.
    """
    config = _alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        forget_superseded_versions(connection, ScriptDirectory.from_config(config))
        config.attributes["connection"] = connection
        command.upgrade(config, "heads")


def forget_superseded_versions(connection: Connection, script: ScriptDirectory) -> None:
    """Delete the rows of `alembic_version` whose revision is an ancestor of another row's.

    Until issue #13, 0002_admin and 0003_limits both followed 0001 (two branches, joined by
    0004_hardening); now the history is one line, 0001 → 0002_admin → 0003_limits → 0004. A
    database migrated after both features landed and before 0004 holds both branch heads,
    {0002_admin, 0003_limits}, and Alembic refuses to upgrade from a pair in which one revision
    descends from the other ("overlaps"). Both are applied, so that database is exactly at
    0003_limits, and keeping only the descendant says so in the new history. A table of one row,
    or of rows on separate branches, or naming revisions this release does not know, is left as is.
    """
    inspector = inspect(connection)
    if not inspector.has_table("alembic_version"):
        return
    versions = {row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))}
    if versions == {"0003_limits"} and not inspector.has_table(_ADMIN_TABLE):
        # Only possible for a database upgraded by hand to 0003_limits alone under the old graph:
        # in the new line 0003 follows 0002, so upgrading would silently skip 0002's tables.
        raise RuntimeError(
            "This database is at 0003_limits without 0002_admin's tables (an upgrade to one branch of the old "
            "migration graph); run `alembic upgrade 0002_admin` from a modelhost release before issue #13 first."
        )
    known = {revision.revision for revision in script.walk_revisions()}
    for version in versions & known:
        ancestors = {revision.revision for revision in script.iterate_revisions(version, "base")} - {version}
        for superseded in ancestors & versions:
            connection.execute(text("DELETE FROM alembic_version WHERE version_num = :v"), {"v": superseded})


_ADMIN_TABLE = "invites"  # one of the tables 0002_admin creates


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def migration_heads() -> set[str]:
    """The newest revision of every migration branch (one: the history is linear), what `alembic_version` holds once migrated."""
    return set(ScriptDirectory.from_config(_alembic_config()).get_heads())


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
