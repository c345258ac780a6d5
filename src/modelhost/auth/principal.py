"""Who is asking: the only identity downstream code ever sees (never the raw key)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """The organization and project a request counts against, and the user and key behind it."""

    organization_id: str
    project_id: str
    user_id: str
    key_id: str
    key_kind: str  # "user" or "project"
