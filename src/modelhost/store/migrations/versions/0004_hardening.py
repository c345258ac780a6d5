"""Hardening, round two (issue #12): what the fixes store.

Each fix adds its tables and columns in its own function below, so the parts stay readable.

(It first joined 0002_admin and 0003_limits, then two branches from 0001; since issue #13 the
history is one line and `modelhost.store.db.forget_superseded_versions` carries databases over.)

Revision ID: 0004_hardening
Revises: 0003_limits
Create Date: 2026-12-01
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0004_hardening"
down_revision = "0003_limits"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    _model_permissions()
    _pending_ledger_rows()
    _rate_limit_setters()


def downgrade() -> None:
    _drop_rate_limit_setters()
    _drop_pending_ledger_rows()
    _drop_model_permissions()


def _model_permissions() -> None:
    """Item 9: a project's own model allow or deny list (the Administration API's model_permissions)."""
    op.create_table(
        "model_permissions",
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("model_ids", sa.JSON, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_model_permissions_organization_id", "model_permissions", ["organization_id"])


def _drop_model_permissions() -> None:
    op.drop_index("ix_model_permissions_organization_id", "model_permissions")
    op.drop_table("model_permissions")


def _pending_ledger_rows() -> None:
    """Item 11: ledger rows written at admission (`pending`, by a replica) and the replicas' heartbeats."""
    with op.batch_alter_table("usage_records") as table:
        table.add_column(sa.Column("replica_id", sa.String(64), nullable=True))
    op.create_index(
        "ix_usage_pending",
        "usage_records",
        ["replica_id"],
        postgresql_where=sa.text("outcome = 'pending'"),
        sqlite_where=sa.text("outcome = 'pending'"),
    )
    op.create_table(
        "ledger_replicas",
        sa.Column("replica_id", sa.String(64), primary_key=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
    )


def _drop_pending_ledger_rows() -> None:
    op.drop_table("ledger_replicas")
    op.drop_index("ix_usage_pending", "usage_records")
    # A row still pending has its prompt tokens: keep it, as what the sweep would have made of it.
    op.execute("UPDATE usage_records SET outcome = 'interrupted' WHERE outcome = 'pending'")
    with op.batch_alter_table("usage_records") as table:
        table.drop_column("replica_id")


# The unique constraint 0003 created without a name, as each database names it (SQLite: through
# the naming convention batch mode reflects it with).
_RATE_LIMITS_UNIQUE = {"postgresql": "rate_limits_scope_scope_id_model_key", "sqlite": "uq_rate_limits_scope_scope_id_model"}
_RATE_LIMITS_NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def _rate_limit_setters() -> None:
    """Item 2: who set a rate-limit row, the operator (CLI) or the organization's admin key (API).

    An admin's project limits are kept beside the operator's, so an admin key can tighten a
    project but never overwrite (raise) what the operator set. Existing rows become the
    operator's: the conservative reading, as an admin can lower but not raise them.
    """
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("rate_limits", naming_convention=_RATE_LIMITS_NAMING) as table:
        table.add_column(sa.Column("set_by", sa.String(16), nullable=False, server_default="operator"))
        table.drop_constraint(_RATE_LIMITS_UNIQUE.get(dialect, _RATE_LIMITS_UNIQUE["postgresql"]), type_="unique")
        table.create_unique_constraint("uq_rate_limits_setting", ["scope", "scope_id", "model", "set_by"])


def _drop_rate_limit_setters() -> None:
    # The old schema holds one row per (scope, model): the admins' project limits are dropped.
    op.execute("DELETE FROM rate_limits WHERE set_by <> 'operator'")
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("rate_limits", naming_convention=_RATE_LIMITS_NAMING) as table:
        table.drop_constraint("uq_rate_limits_setting", type_="unique")
        table.create_unique_constraint(
            _RATE_LIMITS_UNIQUE.get(dialect, _RATE_LIMITS_UNIQUE["postgresql"]), ["scope", "scope_id", "model"]
        )
        table.drop_column("set_by")
