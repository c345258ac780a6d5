"""The store-backed responses tests use the same SQLite and PostgreSQL databases as tests/store."""

from store.conftest import database  # noqa: F401  (the fixture)
