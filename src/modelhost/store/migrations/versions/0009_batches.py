"""Batches (issue #15): a batch, its lease, and each finished line (the durable record a restart resumes from).

A line's row is written when a replica claims it (`running`, with that replica's lease) and
completed in the same transaction as the batch's counters when it finishes; it is keyed by (batch,
line number) and unique per (batch, custom_id). A replica claims only lines without a row or whose
`running` lease has lapsed (its replica died), so after a crash no line runs twice and none is lost.
The output and error files are written from these rows, in line order, when the batch finalizes
(a line's response body is kept as the bytes the endpoint answered); once the batch has ended its
rows are deleted, the files holding them.

Revision ID: 0009_batches
Revises: 0008_files
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_batches"
down_revision = "0008_files"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("api_key_id", sa.String(64), nullable=True),
        sa.Column("key_kind", sa.String(32), nullable=False),  # the creating key's kind: a line runs as it
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("errors", sa.JSON, nullable=True),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("output_expires_after", sa.JSON, nullable=True),
        sa.Column("request_total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("request_completed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("request_failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("enqueued_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("in_progress_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("finalizing_at", TS, nullable=True),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("failed_at", TS, nullable=True),
        sa.Column("expired_at", TS, nullable=True),
        sa.Column("cancelling_at", TS, nullable=True),
        sa.Column("cancelled_at", TS, nullable=True),
        # The replica working on it and until when; another replica takes it over once that has passed.
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
    )
    op.create_index("ix_batches_owner", "batches", ["organization_id", "project_id", "created_at", "id"])
    op.create_index("ix_batches_work", "batches", ["status", "lease_until"])
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(64), sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("custom_id", sa.String(512), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),  # "running", "succeeded", "failed" or "expired"
        sa.Column("record_id", sa.String(64), nullable=True),  # the output line's `id` (batch_req_…)
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("body", sa.Text, nullable=True),  # the endpoint's response body, exactly as it answered
        sa.Column("error", sa.JSON, nullable=True),  # a line that got no response (batch_expired)
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
        # While running: the replica running it and until when; a lapsed lease lets another take it over.
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_custom_id"),
    )
    op.create_index("ix_batch_lines_outcome", "batch_lines", ["batch_id", "outcome"])


def downgrade() -> None:
    op.drop_index("ix_batch_lines_outcome", "batch_lines")
    op.drop_table("batch_lines")
    op.drop_index("ix_batches_work", "batches")
    op.drop_index("ix_batches_owner", "batches")
    op.drop_table("batches")
