"""Conversations and their items (issue #14).

Revision ID: 0006_conversations
Revises: 0005_responses
Create Date: 2026-12-01
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0006_conversations"
down_revision = "0005_responses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
