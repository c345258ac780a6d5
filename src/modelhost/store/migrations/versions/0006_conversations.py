"""Conversations and their items (issue #14).

Revision ID: 0006_conversations
Revises: 0005_responses
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_conversations"
down_revision = "0005_responses"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("item_count", sa.Integer, nullable=False),
        sa.Column("next_position", sa.Integer, nullable=False),
        sa.Column("total_characters", sa.Integer, nullable=False),
    )
    op.create_index("ix_conversations_expires_at", "conversations", ["expires_at"])  # the retention sweep
    op.create_table(
        "conversation_items",
        sa.Column("conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("item", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("conversation_id", "item_id", name="uq_conversation_items_item_id"),
    )


def downgrade() -> None:
    op.drop_table("conversation_items")
    op.drop_index("ix_conversations_expires_at", "conversations")
    op.drop_table("conversations")
