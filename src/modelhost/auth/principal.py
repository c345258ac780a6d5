"""Who is asking: the only identity downstream code ever sees (never the raw key)."""

from __future__ import annotations

from dataclasses import dataclass

#: May generate (chat, completions, embeddings) and read models: user, project, service-account keys.
SCOPE_MODEL_REQUEST = "api.model.request"
#: May read and change the organization through the Administration and Usage APIs: admin keys.
SCOPE_MANAGEMENT_READ = "api.management.read"
SCOPE_MANAGEMENT_WRITE = "api.management.write"

INFERENCE_SCOPES = frozenset({SCOPE_MODEL_REQUEST})
ADMIN_SCOPES = frozenset({SCOPE_MANAGEMENT_READ, SCOPE_MANAGEMENT_WRITE})


@dataclass(frozen=True)
class ModelPolicy:
    """The project's own model permissions (the Administration API's): only `model_ids`, or all but them.

    It narrows what the operator's models file allows the project; it never widens it.
    """

    mode: str  # "allow_list" or "deny_list"
    model_ids: frozenset[str]

    def allows(self, model_id: str) -> bool:
        return (model_id in self.model_ids) == (self.mode == "allow_list")


@dataclass(frozen=True)
class Principal:
    """The organization and project a request counts against, and the user and key behind it.

    `user_id` is the acting user, or the service account for ``sk-svcacct-`` keys. Admin keys act
    on a whole organization: their `project_id` is empty and they never reach a project-scoped route.
    """

    organization_id: str
    project_id: str
    user_id: str
    key_id: str
    key_kind: str  # "user", "project", "service_account" or "admin"
    scopes: frozenset[str] = INFERENCE_SCOPES
    model_policy: ModelPolicy | None = None  # the project's model permissions, read with the key
    # Set on the Principal a batch runs its lines as (never from a request's headers): the line is
    # batch work of this batch — lower priority in the engine, quotas and the enqueued-token limit
    # instead of RPM/TPM, a `batch` ledger row at the batch price.
    batch_id: str | None = None

    @property
    def is_batch(self) -> bool:
        return self.batch_id is not None

    @property
    def is_admin(self) -> bool:
        return SCOPE_MANAGEMENT_WRITE in self.scopes

    def may_use(self, model_id: str) -> bool:
        """Whether the project's own model permissions let it use `model_id` (the operator's lists aside)."""
        return self.model_policy is None or self.model_policy.allows(model_id)
