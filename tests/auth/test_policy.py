"""`auth.policy`: role names and who may do what, as plain functions of roles."""

from __future__ import annotations

import pytest

from modelhost.auth import policy
from modelhost.auth.policy import KeyKind, OrgRole, ProjectRole
from modelhost.auth.principal import ADMIN_SCOPES, INFERENCE_SCOPES


def test_only_organization_owners_may_hold_admin_keys() -> None:
    assert policy.may_hold_admin_key(OrgRole.OWNER)
    assert not policy.may_hold_admin_key(OrgRole.READER)
    assert not policy.may_hold_admin_key(None)


@pytest.mark.parametrize(
    ("org_role", "own_role", "expected"),
    [
        (OrgRole.OWNER, None, ProjectRole.OWNER),  # organization owners own every project
        (OrgRole.OWNER, ProjectRole.MEMBER, ProjectRole.MEMBER),  # an explicit membership says more
        (OrgRole.READER, ProjectRole.OWNER, ProjectRole.OWNER),
        (OrgRole.READER, None, None),
        (None, None, None),
    ],
)
def test_project_role_comes_from_the_membership_else_organization_ownership(
    org_role: str | None, own_role: str | None, expected: str | None
) -> None:
    assert policy.project_role(org_role, own_role) == expected


def test_the_last_owner_cannot_be_demoted_or_removed() -> None:
    assert policy.leaves_no_owner(OrgRole.OWNER, OrgRole.READER, owners=1)
    assert policy.leaves_no_owner(OrgRole.OWNER, None, owners=1)
    assert not policy.leaves_no_owner(OrgRole.OWNER, OrgRole.READER, owners=2)
    assert not policy.leaves_no_owner(OrgRole.OWNER, OrgRole.OWNER, owners=1)
    assert not policy.leaves_no_owner(OrgRole.READER, None, owners=1)


def test_admin_keys_manage_and_every_other_key_generates() -> None:
    assert policy.scopes_of(KeyKind.ADMIN) == ADMIN_SCOPES
    for kind in (KeyKind.USER, KeyKind.PROJECT, KeyKind.SERVICE_ACCOUNT):
        assert policy.scopes_of(kind) == INFERENCE_SCOPES


def test_stored_roles_show_as_the_wire_names() -> None:
    assert [policy.wire_org_role(r) for r in ("owner", "reader", "other")] == ["owner", "reader", "reader"]
    assert [policy.wire_project_role(r) for r in ("owner", "member", "other")] == ["owner", "member", "member"]
