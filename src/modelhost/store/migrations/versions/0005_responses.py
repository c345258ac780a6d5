"""Stored responses and their input and output items (issue #14).

Revision ID: 0005_responses
Revises: 0004_hardening
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_responses"
down_revision = "0004_hardening"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("previous_response_id", sa.String(128), nullable=True),
        sa.Column("chain_length", sa.Integer, nullable=False),
        sa.Column("replica_id", sa.String(64), nullable=True),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("events", sa.JSON, nullable=True),
    )
    op.create_index("ix_responses_owner", "responses", ["organization_id", "project_id"])
    op.create_index("ix_responses_expires_at", "responses", ["expires_at"])
    op.create_table(
        "response_items",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("response_id", sa.String(64), sa.ForeignKey("responses.id", ondelete="CASCADE"), nullable=False),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("item", sa.JSON, nullable=False),
        sa.UniqueConstraint("response_id", "role", "position", name="uq_response_items_position"),
    )
    op.create_index("ix_response_items_item", "response_items", ["project_id", "item_id"])


def downgrade() -> None:
    op.drop_index("ix_response_items_item", "response_items")
    op.drop_table("response_items")
    op.drop_index("ix_responses_expires_at", "responses")
    op.drop_index("ix_responses_owner", "responses")
    op.drop_table("responses")
