"""Hardening, round two (issue #12): joins the two heads of 0001 and adds what the fixes store.

Each fix adds its tables and columns in its own function below, so the parts stay readable.

Revision ID: 0004_hardening
Revises: 0002_admin, 0003_limits
Create Date: 2026-12-01
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0004_hardening"
down_revision = ("0002_admin", "0003_limits")
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    _model_permissions()


def downgrade() -> None:
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
