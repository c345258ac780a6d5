"""The store's tests run on a freshly migrated SQLite and PostgreSQL database each: the `database`
fixture, from store/databases.py (registered for the whole suite in tests/conftest.py)."""
