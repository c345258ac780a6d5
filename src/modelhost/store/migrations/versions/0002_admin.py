"""The Administration API: admin and service-account keys, project members, invites, audit logs.

Revision ID: 0002_admin
Revises: 0001
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_admin"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "service_accounts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("deleted_at", TS),
    )
    op.create_index("ix_service_accounts_project_id", "service_accounts", ["project_id"])

    # Service-account keys have no user; admin keys may expire. (SQLite: the table is copied.)
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("user_id", existing_type=sa.String(64), nullable=True)
        batch.add_column(sa.Column("service_account_id", sa.String(64)))
        batch.add_column(sa.Column("expires_at", TS))
        batch.create_foreign_key(
            "fk_api_keys_service_account_id", "service_accounts", ["service_account_id"], ["id"]
        )

    op.create_table(
        "project_memberships",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.String(64), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("project_id", "user_id"),
    )
    op.create_index("ix_project_memberships_project_id", "project_memberships", ["project_id"])

    op.create_table(
        "invites",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("projects", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("accepted_at", TS),
    )
    op.create_index("ix_invites_org_email", "invites", ["organization_id", "email"])

    op.create_table(
        "audit_logs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("effective_at", TS, nullable=False),
        sa.Column("project_id", sa.String(64)),
        sa.Column("project_name", sa.String(256)),
        sa.Column("actor", sa.JSON),
        sa.Column("actor_id", sa.String(64)),
        sa.Column("actor_key_id", sa.String(64)),
        sa.Column("actor_email", sa.String(320)),
        sa.Column("resource_id", sa.String(64)),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_org_time", "audit_logs", ["organization_id", "effective_at"])


def downgrade() -> None:
    op.drop_table("audit_logs")
    op.drop_table("invites")
    op.drop_table("project_memberships")
    # Keys that only this revision can represent go with it.
    op.execute("DELETE FROM api_keys WHERE kind IN ('admin', 'service_account')")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("fk_api_keys_service_account_id", type_="foreignkey")
        batch.drop_column("expires_at")
        batch.drop_column("service_account_id")
        batch.alter_column("user_id", existing_type=sa.String(64), nullable=False)
    op.drop_table("service_accounts")
