"""Stored chat completions, `store: true` (issue #14): the completion, its request messages, its metadata.

Revision ID: 0007_stored_chat_completions
Revises: 0006_conversations
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_stored_chat_completions"
down_revision = "0006_conversations"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "stored_chat_completions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("completion", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index(
        "ix_stored_chat_completions_owner",
        "stored_chat_completions",
        ["organization_id", "project_id", "created_at", "id"],
    )
    op.create_index("ix_stored_chat_completions_expires_at", "stored_chat_completions", ["expires_at"])
    op.create_table(
        "stored_chat_messages",
        sa.Column(
            "completion_id",
            sa.String(64),
            sa.ForeignKey("stored_chat_completions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("message_id", sa.String(80), nullable=False),
        sa.Column("message", sa.JSON, nullable=False),
    )
    op.create_table(
        "stored_chat_metadata",
        sa.Column(
            "completion_id",
            sa.String(64),
            sa.ForeignKey("stored_chat_completions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
    )
    op.create_index("ix_stored_chat_metadata_pair", "stored_chat_metadata", ["key", "value"])


def downgrade() -> None:
    op.drop_index("ix_stored_chat_metadata_pair", "stored_chat_metadata")
    op.drop_table("stored_chat_metadata")
    op.drop_table("stored_chat_messages")
    op.drop_index("ix_stored_chat_completions_expires_at", "stored_chat_completions")
    op.drop_index("ix_stored_chat_completions_owner", "stored_chat_completions")
    op.drop_table("stored_chat_completions")
