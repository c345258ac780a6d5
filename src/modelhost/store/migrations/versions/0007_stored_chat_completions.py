"""Stored chat completions, `store: true` (issue #14).

Revision ID: 0007_stored_chat_completions
Revises: 0006_conversations
Create Date: 2026-12-01
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0007_stored_chat_completions"
down_revision = "0006_conversations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
