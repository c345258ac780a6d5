"""Usage rows say whether they were batch work (issue #15): the Usage API's `batch` filter and group_by,
and the batch price multiplier; rate limits get OpenAI's `batch_1_day_max_input_tokens` (the tokens a
project's unfinished batches may hold enqueued per model).

Revision ID: 0010_batch_usage
Revises: 0009_batches
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_batch_usage"
down_revision = "0009_batches"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as table:
        table.add_column(sa.Column("batch", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("rate_limits") as table:
        table.add_column(sa.Column("batch_1_day_max_input_tokens", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rate_limits") as table:
        table.drop_column("batch_1_day_max_input_tokens")
    with op.batch_alter_table("usage_records") as table:
        table.drop_column("batch")
