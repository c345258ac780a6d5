"""The only package that knows SQL: schema, migrations, tenancy and the usage ledger."""

# The stored objects' tables register on `schema.Base` when their modules are imported: importing
# the package imports them, so `Base.metadata` always describes every table the migrations make.
from modelhost.store import batches, chat_completions, conversations, responses  # noqa: F401
from modelhost.store import files  # noqa: F401  # files, uploads, parts, storage in use
from modelhost.store.db import migrate, open_engine, session_factory
from modelhost.store.ledger import UsageEntry, UsageLedger, UsageTotal

__all__ = ["migrate", "open_engine", "session_factory", "UsageEntry", "UsageLedger", "UsageTotal"]
