"""Rate limits and quotas (spend budgets) of organizations and projects.

Revision ID: 0003_limits
Revises: 0002_admin
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_limits"
down_revision = "0002_admin"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("max_requests_per_1_minute", sa.Integer),
        sa.Column("max_tokens_per_1_minute", sa.BigInteger),
        sa.Column("max_requests_per_1_day", sa.Integer),
        sa.Column("max_concurrent_requests", sa.Integer),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("scope", "scope_id", "model"),
    )
    op.create_index("ix_rate_limits_organization_id", "rate_limits", ["organization_id"])
    op.create_table(
        "quotas",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("hard_limit", sa.BigInteger),
        sa.Column("soft_limit", sa.BigInteger),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("scope", "scope_id"),
    )
    op.create_index("ix_quotas_organization_id", "quotas", ["organization_id"])


def downgrade() -> None:
    op.drop_index("ix_quotas_organization_id", "quotas")
    op.drop_table("quotas")
    op.drop_index("ix_rate_limits_organization_id", "rate_limits")
    op.drop_table("rate_limits")
