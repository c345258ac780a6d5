"""Files and Uploads (issue #15): file metadata of a project; the bytes live in the blob store.

`files.status` is `processed` while a file is visible and `deleted` once it was deleted or expired
but its blob may still be in the store (the sweep removes the blob, then the row). `uploads.received`
counts the bytes of its parts, reserved by a conditional UPDATE so concurrent parts never pass the
declared `bytes`. `file_storage` is each project's bytes in use (live files plus pending uploads as
declared), changed only by conditional UPDATEs so two replicas never both pass the project's limit.

Revision ID: 0008_files
Revises: 0007_stored_chat_completions
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_files"
down_revision = "0007_stored_chat_completions"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("md5", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_details", sa.Text, nullable=True),
        sa.Column("blob_key", sa.String(256), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
    )
    op.create_index("ix_files_owner", "files", ["organization_id", "project_id", "created_at", "id"])
    op.create_index("ix_files_expires_at", "files", ["expires_at"])
    op.create_index("ix_files_status", "files", ["status"])
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("received", sa.BigInteger, nullable=False),
        sa.Column("mime_type", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("file_id", sa.String(64), nullable=True),
        sa.Column("file_expires_seconds", sa.Integer, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_uploads_owner", "uploads", ["organization_id", "project_id"])
    op.create_index("ix_uploads_expires_at", "uploads", ["status", "expires_at"])
    op.create_table(
        "upload_parts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("upload_id", sa.String(64), sa.ForeignKey("uploads.id", ondelete="CASCADE"), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("blob_key", sa.String(256), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_upload_parts_upload", "upload_parts", ["upload_id"])
    op.create_table(
        "file_storage",
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), primary_key=True),
        sa.Column("bytes", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("file_storage")
    op.drop_index("ix_upload_parts_upload", "upload_parts")
    op.drop_table("upload_parts")
    op.drop_index("ix_uploads_expires_at", "uploads")
    op.drop_index("ix_uploads_owner", "uploads")
    op.drop_table("uploads")
    op.drop_index("ix_files_status", "files")
    op.drop_index("ix_files_expires_at", "files")
    op.drop_index("ix_files_owner", "files")
    op.drop_table("files")
