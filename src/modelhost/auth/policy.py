"""Who may do what: role names and the permission checks every package asks, in one place.

Roles are OpenAI's: an organization member is an ``owner`` or a ``reader``; a project member an
``owner`` or a ``member``; a service account a ``member`` (or ``none`` when it was made without
a key). Keys are of four kinds, each with its scopes. Role-based access control (custom roles,
per-resource permissions) grows here: a new rule is a function of roles, never a string compared
in a route or a query.

``may_hold_admin_key(member.role)`` is how `organization.admin_keys` and the authenticator ask the
same question; ``OrgRole.OWNER`` is what `store` compares in SQL.
"""

from __future__ import annotations

from typing import Final, Literal

from modelhost.auth.principal import ADMIN_SCOPES, INFERENCE_SCOPES


class OrgRole:
    """A member's role in an organization."""

    OWNER: Final = "owner"
    READER: Final = "reader"
    ALL: Final = (OWNER, READER)


class ProjectRole:
    """A user's role in a project."""

    OWNER: Final = "owner"
    MEMBER: Final = "member"
    ALL: Final = (OWNER, MEMBER)


class ServiceAccountRole:
    """A service account's role in its project: ``none`` while it has no key."""

    MEMBER: Final = "member"
    NONE: Final = "none"


#: What the Administration API shows for someone who holds no role (any longer).
NO_ROLE: Final = "none"


class KeyKind:
    """What a key is bound to: a user, a project (by a user or a service account), an organization's administration."""

    USER: Final = "user"
    PROJECT: Final = "project"
    SERVICE_ACCOUNT: Final = "service_account"
    ADMIN: Final = "admin"


def scopes_of(kind: str) -> frozenset[str]:
    """The scopes a key of `kind` carries: admin keys manage the organization, the others generate."""
    return ADMIN_SCOPES if kind == KeyKind.ADMIN else INFERENCE_SCOPES


def is_owner(org_role: str | None) -> bool:
    return org_role == OrgRole.OWNER


def may_hold_admin_key(org_role: str | None) -> bool:
    """Admin keys belong to organization owners; a key's power ends when its owner stops being one."""
    return is_owner(org_role)


def project_role(org_role: str | None, own_role: str | None) -> str | None:
    """A user's role in a project: their own membership's, else ``owner`` for an owner of the organization."""
    if own_role is not None:
        return own_role
    return ProjectRole.OWNER if is_owner(org_role) else None


def leaves_no_owner(current: str, wanted: str | None, owners: int) -> bool:
    """Whether changing a member's role from `current` to `wanted` (None: removing them) leaves no owner."""
    return is_owner(current) and not is_owner(wanted) and owners <= 1


def wire_org_role(stored: str) -> Literal["owner", "reader"]:
    """The organization role as the API shows it (anything but an owner reads)."""
    return OrgRole.OWNER if is_owner(stored) else OrgRole.READER


def wire_project_role(stored: str) -> Literal["owner", "member"]:
    """The project role as the API shows it (anything but an owner is a member)."""
    return ProjectRole.OWNER if stored == ProjectRole.OWNER else ProjectRole.MEMBER
