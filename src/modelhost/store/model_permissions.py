"""A project's own model permissions: one allow or deny list per project, or none.

Functions take an open `Session` and commit nothing themselves; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from modelhost.store.schema import ModelPermission, Project
from modelhost.store.tenancy import utcnow

MODES = ("allow_list", "deny_list")


def of_project(session: Session, project_id: str) -> ModelPermission | None:
    return session.get(ModelPermission, project_id)


def put(session: Session, project: Project, mode: str, model_ids: Sequence[str]) -> ModelPermission:
    """Replace the project's list (create it when there is none)."""
    assert mode in MODES, f"mode is one of {MODES}"
    row = of_project(session, project.id)
    if row is None:
        row = ModelPermission(project_id=project.id, organization_id=project.organization_id)
        session.add(row)
    row.mode = mode
    row.model_ids = list(model_ids)
    row.updated_at = utcnow()
    session.flush()
    return row


def remove(session: Session, project_id: str) -> bool:
    """Drop the project's list (it then uses everything the operator allows); False when it had none."""
    row = of_project(session, project_id)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True
