"""Stored responses and their input and output items (issue #14).

Revision ID: 0005_responses
Revises: 0004_hardening
Create Date: 2026-12-01
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0005_responses"
down_revision = "0004_hardening"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
