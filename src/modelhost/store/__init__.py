"""The only package that knows SQL: schema, migrations, tenancy and the usage ledger."""

from modelhost.store.db import migrate, open_engine, session_factory
from modelhost.store.ledger import UsageEntry, UsageLedger, UsageTotal

__all__ = ["migrate", "open_engine", "session_factory", "UsageEntry", "UsageLedger", "UsageTotal"]
