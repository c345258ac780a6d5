"""The Batch API as plain functions: create, retrieve, list, cancel; a session factory and the caller in, wire objects out.

Creating a batch checks what needs no reading of the file (the endpoint, the completion window,
the input file: the caller's, of purpose ``batch``) and answers at once with status
``validating``; the runner reads the file, validates its lines against the batch and runs them
(`runner.py`). Every function filters on the caller's organization and project: another project's
batch is a 404, as one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth.principal import INFERENCE_SCOPES, ModelPolicy, Principal
from modelhost.batches.files import BatchFiles
from modelhost.errors import APIError, InvalidRequest, NotFound
from modelhost.ids import new_id
from modelhost.organization.common import listing
from modelhost.protocol.batches import (
    COMPLETION_WINDOWS,
    ENDPOINTS,
    Batch,
    BatchList,
    BatchListQuery,
    CreateBatchRequest,
)
from modelhost.store import batches as store
from modelhost.store import locks, model_permissions
from modelhost.store.pages import UnknownCursor
from modelhost.store.tenancy import as_utc

Clock = Callable[[], datetime]
WINDOW = timedelta(hours=24)
INPUT_PURPOSE = "batch"


class BatchConflict(InvalidRequest):
    """The batch is not in a state that allows this (cancelling one that has ended)."""

    status = 409


class TooManyOpenBatches(APIError):
    """The project has `batch_max_open_per_project` batches not yet ended: one must end (or be cancelled) first.

    A 429 typed as OpenAI types a limit on requests; not retried by the SDKs (`x-should-retry: false`):
    a batch takes hours to end, far more than their back-off."""

    status = 429
    type = "requests"
    code = "too_many_open_batches"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This project has {limit} batches that have not ended, the most it may have at once. "
            "Wait for one to end, or cancel one, and retry.",
            headers={"x-should-retry": "false"},
        )


def create(
    sessions: sessionmaker[Session], files: BatchFiles, who: Principal, body: CreateBatchRequest, *, now: datetime, max_open: int = 0
) -> Batch:
    """A new batch of `who`'s project in status ``validating`` (blocking: call it on a worker thread).

    `max_open`: the most batches of the project not yet ended (0: no limit), counted with the
    project's row locked, so creations on any number of replicas never pass it together."""
    if body.endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"Invalid 'endpoint': {body.endpoint!r} is not supported; use one of {', '.join(ENDPOINTS)}.",
            param="endpoint",
            code="invalid_value",
        )
    if body.completion_window not in COMPLETION_WINDOWS:
        raise InvalidRequest(
            f"Invalid 'completion_window': {body.completion_window!r}; only '24h' is supported.",
            param="completion_window",
            code="invalid_value",
        )
    try:
        found = files.retrieve(who, body.input_file_id)
    except NotFound:
        raise InvalidRequest(
            f"Invalid 'input_file_id': no file found with id '{body.input_file_id}'.", param="input_file_id", code="invalid_value"
        ) from None
    if found.get("purpose") != INPUT_PURPOSE:
        raise InvalidRequest(
            f"Invalid 'input_file_id': the file must be uploaded with purpose '{INPUT_PURPOSE}', not '{found.get('purpose')}'.",
            param="input_file_id",
            code="invalid_value",
        )
    row = store.BatchRow(
        id=new_id("batch_"),
        organization_id=who.organization_id,
        project_id=who.project_id,
        user_id=who.user_id or None,
        api_key_id=who.key_id or None,
        key_kind=who.key_kind,
        endpoint=body.endpoint,
        model=None,
        input_file_id=body.input_file_id,
        completion_window=body.completion_window,
        status=store.VALIDATING,
        metadata_=body.metadata,
        output_expires_after=body.output_expires_after.model_dump() if body.output_expires_after else None,
        created_at=now,
        expires_at=now + WINDOW,
        request_total=0, request_completed=0, request_failed=0,
        input_tokens=0, cached_tokens=0, output_tokens=0, enqueued_tokens=0,
    )
    with sessions.begin() as session:
        if max_open:
            locks.lock_project(session, who.project_id)
            if store.open_batches(session, who.organization_id, who.project_id) >= max_open:
                raise TooManyOpenBatches(max_open)
        session.add(row)
        session.flush()
        return render(row)


def retrieve(sessions: sessionmaker[Session], who: Principal, batch_id: str) -> Batch:
    with sessions() as session:
        return render(store.find_batch(session, who.organization_id, who.project_id, batch_id))


def list_batches(sessions: sessionmaker[Session], who: Principal, query: BatchListQuery) -> BatchList:
    with sessions() as session:
        try:
            page = store.page_batches(session, who.organization_id, who.project_id, limit=query.limit, after=query.after)
        except UnknownCursor as exc:
            raise InvalidRequest(f"Invalid '{exc.param}': it names no batch of this list.", param=exc.param, code="invalid_value") from exc
        return listing(BatchList, [render(row) for row in page.items], page.has_more)


def cancel(sessions: sessionmaker[Session], who: Principal, batch_id: str, *, now: datetime) -> Batch:
    """Ask the runner to stop the batch: ``cancelling`` now, ``cancelled`` once its running lines have ended."""
    with sessions.begin() as session:
        row = store.find_batch(session, who.organization_id, who.project_id, batch_id, lock=True)
        if row.status in (store.VALIDATING, store.IN_PROGRESS):
            row.status, row.cancelling_at = store.CANCELLING, now
        elif row.status != store.CANCELLING:
            raise BatchConflict(f"Cannot cancel a batch with status '{row.status}'.")
        session.flush()
        return render(row)


def principal_of(session: Session, row: store.BatchRow) -> Principal:
    """Who the batch's lines run as: its creator's organization, project, user and key, with the
    project's model permissions as they are now, marked as batch work of this batch."""
    permission = model_permissions.of_project(session, row.project_id)
    policy = None if permission is None else ModelPolicy(permission.mode, frozenset(permission.model_ids))
    return Principal(
        row.organization_id,
        row.project_id,
        row.user_id or "",
        row.api_key_id or "",
        row.key_kind,
        INFERENCE_SCOPES,
        model_policy=policy,
        batch_id=row.id,
    )


def _seconds(moment: datetime | None) -> int | None:
    at = as_utc(moment)
    return None if at is None else int(at.timestamp())


def render(row: store.BatchRow) -> Batch:
    """The Batch object of `row`, counters and usage as they are now."""
    data: dict[str, Any] = {
        "id": row.id,
        "endpoint": row.endpoint,
        "model": row.model,
        "errors": row.errors,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": _seconds(row.created_at),
        "request_counts": {"total": row.request_total, "completed": row.request_completed, "failed": row.request_failed},
        "usage": {
            "input_tokens": row.input_tokens,
            "input_tokens_details": {"cached_tokens": row.cached_tokens},
            "output_tokens": row.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": row.input_tokens + row.output_tokens,
        },
        "metadata": row.metadata_,
    }
    for name in (
        "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
    ):
        data[name] = _seconds(getattr(row, name))
    return Batch.model_validate(data)
