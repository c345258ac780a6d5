"""Row locks that serialize a check and the write it allows across replicas: "count, then insert if
under the limit" holds only if no other transaction counts in between.

PostgreSQL: ``SELECT … FOR UPDATE`` on the row, held until the transaction ends. SQLite: a read
takes no lock (pysqlite begins the transaction at the first write), so a no-op UPDATE of the row
takes the database's write lock first; SQLite has one writer, so that lock is the whole database's.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from modelhost.store.schema import Organization, Project


def lock_organization(session: Session, organization_id: str) -> None:
    """Hold the organization's row until this transaction ends (other lockers of it wait)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Organization.id).where(Organization.id == organization_id).with_for_update())
    else:
        session.execute(update(Organization).where(Organization.id == organization_id).values(name=Organization.name))


def lock_project(session: Session, project_id: str) -> None:
    """Hold the project's row until this transaction ends (other lockers of it wait)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Project.id).where(Project.id == project_id).with_for_update())
    else:
        session.execute(update(Project).where(Project.id == project_id).values(name=Project.name))
