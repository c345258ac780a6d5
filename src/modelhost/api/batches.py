"""`POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`.

Thin routes over `batches.objects`; the lines are run by the replica's `BatchRunner` (`batches/runner.py`),
which a create or a cancel here wakes. A field without a value (`completed_at` of a batch still
running, `errors` of one that did not fail) is left out, as the spec types none of them nullable.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from modelhost.api.admin.deps import parse_query, query_doc, stored_path_params
from modelhost.api.deps import app_state, in_thread, principal
from modelhost.auth import Principal
from modelhost.batches import objects
from modelhost.batches.runner import BatchRunner
from modelhost.protocol.batches import Batch, BatchList, BatchListQuery, CreateBatchRequest
from modelhost.protocol.common import ErrorResponse

router = APIRouter(
    prefix="/v1/batches",
    tags=["Batch"],
    dependencies=[Depends(principal), Depends(stored_path_params)],
    responses={status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 429)},
)


def _runner(request: Request) -> BatchRunner:
    return request.app.state.batch_runner  # type: ignore[no-any-return]


@router.post("", response_model=Batch, response_model_exclude_none=True)
async def create_batch(body: CreateBatchRequest, request: Request, who: Principal = Depends(principal)) -> Batch:
    runner = _runner(request)
    # A write: run to its end even if the client leaves (run_in_threadpool is not abandoned on cancel).
    state = app_state(request)
    batch = await run_in_threadpool(
        objects.create, state.sessions, runner.files, who, body,
        now=runner.clock(), max_open=state.settings.batch_max_open_per_project,
    )
    runner.wake()
    return batch


@router.get("", response_model=BatchList, response_model_exclude_none=True, openapi_extra=query_doc(BatchListQuery))
async def list_batches(request: Request, who: Principal = Depends(principal)) -> BatchList:
    query = parse_query(request, BatchListQuery)
    return await in_thread(objects.list_batches, app_state(request).sessions, who, query)


@router.get("/{batch_id}", response_model=Batch, response_model_exclude_none=True)
async def retrieve_batch(batch_id: str, request: Request, who: Principal = Depends(principal)) -> Batch:
    return await in_thread(objects.retrieve, app_state(request).sessions, who, batch_id)


@router.post("/{batch_id}/cancel", response_model=Batch, response_model_exclude_none=True)
async def cancel_batch(batch_id: str, request: Request, who: Principal = Depends(principal)) -> Batch:
    runner = _runner(request)
    batch = await run_in_threadpool(objects.cancel, app_state(request).sessions, who, batch_id, now=runner.clock())
    runner.wake()
    return batch
