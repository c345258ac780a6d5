"""The first organization of an empty store, and the operator's lookups by id, email or name.

`bootstrap` runs at every start (server and CLI); the lookups are how the CLI names users and
organizations (``owner@localhost``, ``Personal``) where the API takes ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.errors import InvalidRequest, NotFound
from modelhost.store import tenancy
from modelhost.store.schema import Organization, User

DEFAULT_OWNER_EMAIL = "owner@localhost"


@dataclass(frozen=True)
class Bootstrap:
    created: bool
    organization_id: str
    project_id: str
    user_id: str
    user_email: str


def bootstrap(sessions: sessionmaker[Session], owner_email: str = DEFAULT_OWNER_EMAIL) -> Bootstrap:
    """On an empty store, create the first owner, organization and default project.

    Replicas starting together on one empty database race here; the owner's unique email lets
    exactly one of them create the organization (owner, organization and project are one
    transaction). The others find the owner there already (or are refused by the constraint when
    both inserted it at once) and, trying again, read what the winner created.
    """
    try:
        return _bootstrap_once(sessions, owner_email)
    except (IntegrityError, tenancy.TenancyConflict):
        return _bootstrap_once(sessions, owner_email)


def _bootstrap_once(sessions: sessionmaker[Session], owner_email: str) -> Bootstrap:
    with sessions() as session:
        owner = session.scalar(select(User).order_by(User.created_at).limit(1))
        if owner is not None and owner.default_organization_id:
            project = tenancy.default_project(session, owner.default_organization_id)
            assert project is not None
            return Bootstrap(False, owner.default_organization_id, project.id, owner.id, owner.email)
        owner = owner or tenancy.create_user(session, owner_email, "Owner")
        org = tenancy.create_organization(session, "Personal", owner)
        session.commit()
        project = tenancy.default_project(session, org.id)
        assert project is not None
        return Bootstrap(True, org.id, project.id, owner.id, owner.email)


def find_user(session: Session, who: str | None) -> User:
    if who is None:
        user = session.scalar(select(User).order_by(User.created_at).limit(1))
    else:
        user = tenancy.find_user(session, who)
    if user is None:
        raise NotFound(f"No user {who!r}.")
    return user


def find_organization(session: Session, which: str) -> Organization:
    org = tenancy.find_organization(session, which)
    if org is None:
        raise NotFound(f"No organization {which!r}.")
    return org


def organization_or_default(session: Session, organization: str | None) -> str:
    if organization:
        return find_organization(session, organization).id
    owner = find_user(session, None)
    if owner.default_organization_id is None:
        raise InvalidRequest("Name the organization with --org.")
    return owner.default_organization_id
