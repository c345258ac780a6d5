"""The tables, as SQLAlchemy 2.0 typed models. Alembic migrations create them; this is their shape."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, false, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    default_organization_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("organizations.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Membership(Base):
    """A user's place in an organization, with a role (`owner` or `reader`, as at OpenAI)."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "organization_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64), ForeignKey("users.id"))
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """A secret key, stored only as its SHA-256 (the secret has 256 random bits, so no slow hash).

    Kinds: ``user`` (any of the user's organizations), ``project`` (one project, owned by a user),
    ``service_account`` (one project, owned by a service account, no user) and ``admin`` (the
    Administration API of one organization, owned by one of its owners).
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    redacted_value: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(256))
    user_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("users.id"))
    organization_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("organizations.id"))
    project_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("projects.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    service_account_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("service_accounts.id"))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ServiceAccount(Base):
    """A project's non-human member; its keys (`sk-svcacct-…`) act for the project, not for a user."""

    __tablename__ = "service_accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))  # "member" or "none" (created without a key)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ProjectMembership(Base):
    """A user's place in a project (`owner` or `member`); the user is a member of its organization."""

    __tablename__ = "project_memberships"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"), index=True)
    user_id: Mapped[str] = mapped_column(String(64), ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Invite(Base):
    """An invitation of an email address into an organization (and some of its projects)."""

    __tablename__ = "invites"
    __table_args__ = (Index("ix_invites_org_email", "organization_id", "email"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    projects: Mapped[list[dict[str, str]]] = mapped_column(JSON)  # [{"id": "proj_…", "role": "member"}]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditLogEntry(Base):
    """One administrative event of an organization, in the shape OpenAI's audit log reports it."""

    __tablename__ = "audit_logs"
    __table_args__ = (Index("ix_audit_org_time", "organization_id", "effective_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    effective_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    project_id: Mapped[str | None] = mapped_column(String(64))
    project_name: Mapped[str | None] = mapped_column(String(256))
    actor: Mapped[dict[str, object] | None] = mapped_column(JSON)
    actor_id: Mapped[str | None] = mapped_column(String(64))  # user or service account id
    actor_key_id: Mapped[str | None] = mapped_column(String(64))
    actor_email: Mapped[str | None] = mapped_column(String(320))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, object]] = mapped_column(JSON)


class UsageRecord(Base):
    """One generation: who asked, for which organization and project, and the tokens it cost."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_org_time", "organization_id", "created_at"),
        Index("ix_usage_project_time", "project_id", "created_at"),
        # Only the few rows still in flight: the sweep reads them on every heartbeat.
        Index(
            "ix_usage_pending",
            "replica_id",
            postgresql_where=text("outcome = 'pending'"),
            sqlite_where=text("outcome = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    organization_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(64))
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    operation: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    # pending (written at admission, before any engine work), then completed, cancelled or failed;
    # interrupted: the process that admitted it died, the row keeps what was known (store/ledger.py).
    outcome: Mapped[str] = mapped_column(String(16))
    replica_id: Mapped[str | None] = mapped_column(String(64))  # the process that admitted it
    # A line of a batch (`Principal.is_batch`): priced at the batch multiplier, the Usage API's `batch`.
    batch: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class LedgerReplica(Base):
    """A live server process that may hold pending ledger rows, and when it last said so."""

    __tablename__ = "ledger_replicas"

    replica_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RateLimitSetting(Base):
    """Rate limits set for an organization or a project, for one model or all (``*``).

    `set_by` is who set them: the operator (CLI; organization and project rows) or the
    organization's admin key (Administration API; project rows only, never above the operator's).
    A NULL field inherits (project → organization → settings); 0 means no limit of its own.
    """

    __tablename__ = "rate_limits"
    __table_args__ = (UniqueConstraint("scope", "scope_id", "model", "set_by", name="uq_rate_limits_setting"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"), index=True)
    scope: Mapped[str] = mapped_column(String(16))  # "organization" or "project"
    scope_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    set_by: Mapped[str] = mapped_column(String(16), default="operator", server_default="operator")  # or "admin"
    max_requests_per_1_minute: Mapped[int | None] = mapped_column(Integer)
    max_tokens_per_1_minute: Mapped[int | None] = mapped_column(BigInteger)
    max_requests_per_1_day: Mapped[int | None] = mapped_column(Integer)
    max_concurrent_requests: Mapped[int | None] = mapped_column(Integer)  # per key
    # Tokens a project's unfinished batches may hold enqueued for the model (OpenAI's batch queue limit).
    batch_1_day_max_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class QuotaSetting(Base):
    """A spending budget of an organization or a project: per period, in tokens or US dollars.

    Limits are integers in the unit's smallest step: tokens, or millionths of a dollar.
    """

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("scope", "scope_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"), index=True)
    scope: Mapped[str] = mapped_column(String(16))  # "organization" or "project"
    scope_id: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str] = mapped_column(String(16))  # "tokens" or "usd"
    period: Mapped[str] = mapped_column(String(16))  # "day", "week" or "month" (UTC calendar)
    hard_limit: Mapped[int | None] = mapped_column(BigInteger)
    soft_limit: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelPermission(Base):
    """A project's own model permissions (OpenAI's `project.model_permissions`): an allow or a deny list.

    It only narrows what the operator's models file lets the project use (its project and
    organization lists); a project without a row uses all of that. Ids are canonical model ids.
    """

    __tablename__ = "model_permissions"

    project_id: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"), index=True)
    mode: Mapped[str] = mapped_column(String(16))  # "allow_list" or "deny_list"
    model_ids: Mapped[list[str]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
