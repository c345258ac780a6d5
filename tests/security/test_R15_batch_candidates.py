"""R15: one organization's many unfinished batches must not hide another organization's batch from
the runner (its poll reads one page of candidates: they were the oldest overall, so a tenant that
queued a page of batches starved everyone else's until its own had ended)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from store.databases import Database

from modelhost.store import batches as store
from modelhost.store import tenancy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)




def _batches(database: Database, name: str, count: int, start: datetime) -> list[str]:
    ids = []
    with database.sessions.begin() as session:
        org = tenancy.create_organization(session, name)
        session.flush()
        project = tenancy.default_project(session, org.id)
        assert project is not None
        for i in range(count):
            batch_id = f"batch_{name}_{i:03d}"
            session.add(
                store.BatchRow(
                    id=batch_id, organization_id=org.id, project_id=project.id, key_kind="project",
                    endpoint="/v1/chat/completions", input_file_id="file-1", completion_window="24h",
                    status=store.IN_PROGRESS, created_at=start + timedelta(seconds=i), expires_at=start + timedelta(hours=24),
                    request_total=1, request_completed=0, request_failed=0, input_tokens=0, cached_tokens=0,
                    output_tokens=0, enqueued_tokens=0,
                )
            )
            ids.append(batch_id)
    return ids


def test_a_page_of_one_organizations_batches_does_not_hide_another_organizations(database: Database) -> None:
    flood = _batches(database, "flood", 30, NOW)
    victim = _batches(database, "victim", 1, NOW + timedelta(minutes=5))
    with database.sessions() as session:
        page = [row.id for row in store.candidates(session, limit=10)]
    assert victim[0] in page
    assert page[:2] == [flood[0], victim[0]]  # each organization's oldest first
    assert page[2:] == flood[1:9]  # then the rest, oldest first
