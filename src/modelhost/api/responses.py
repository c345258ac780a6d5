"""`/v1/responses`: create (JSON or SSE), retrieve, delete, list input items, count input tokens, compact.

A response takes the road chat completions take (convert → admitted → plan → run → assemble →
settle, api/chat.py); what differs is its context (`responses.context`: a stored chain and item
references) and its rendering (`responses.render`, `responses.events`). A stored response is
written before the client is told it is complete: before `response.completed` is sent, before the
JSON body is returned.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import anyio
from sqlalchemy.exc import SQLAlchemyError
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.convertors import Convertor, register_url_convertor

from modelhost.api import generation as gen
from modelhost.api.deps import app_state, in_thread, principal
from modelhost.api.state import AppState
from modelhost.auth import Principal
from modelhost.engine.base import EngineEvent
from modelhost.engine.registry import CHAT
from modelhost.errors import APIError, InvalidRequest, ServiceUnavailable
from modelhost.ids import new_id
from modelhost.pipeline import GenerationRun
from modelhost.pipeline.admission import admitted
from modelhost.pipeline.assembly import Assembler, collect
from modelhost.pipeline.ledger_writer import STALE_HEARTBEATS
from modelhost.pipeline.planning import ChatPlan
from modelhost.protocol.common import ErrorResponse, stored_text
from modelhost.protocol.responses import (
    CompactedResponse,
    CompactRequest,
    CreateResponse,
    DeletedResponse,
    InputTokens,
    ItemList,
    ResponseObject,
)
from modelhost.responses import compaction
from modelhost.responses import context as ctx
from modelhost.responses import render
from modelhost.responses import request as req
from modelhost.responses.background import FINAL_SAVE_DELAYS, BackgroundResponses, EventLog, queued_events, run_detached
from modelhost.responses.events import Event, ResponseEvents, sse
from modelhost.responses.items import page
from modelhost.store.tenancy import utcnow

logger = logging.getLogger(__name__)


class ResponseIdConvertor(Convertor[str]):
    """A response id in a path: any segment but the fixed names beside it (`input_tokens`, `compact`),
    so `/v1/responses/input_tokens` is only the POST that counts tokens (its `Allow` says so too)."""

    regex = r"(?!(?:input_tokens|compact)(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("response_id", ResponseIdConvertor())  # Starlette's registry of path types
router = APIRouter(dependencies=[Depends(principal)])
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (400, 401, 404, 429)}
MAX_PAGE = 100
NOT_STORED = (
    "The response was generated and billed, but could not be stored, so it is not returned; "
    "a retry generates (and bills) it again."
)
REPLAY_WAIT_SECONDS, REPLAY_POLL_SECONDS = 600.0, 0.5  # following a response that runs on another replica


@router.post("/v1/responses", response_model=ResponseObject, responses=ERRORS)
async def create_response(body: CreateResponse, request: Request, who: Principal = Depends(principal)) -> Response:
    state = app_state(request)
    if body.ignored_fields():
        logger.info("responses: ignoring unsupported fields %s", ", ".join(body.ignored_fields()))
    req.check(body)
    now = utcnow()
    async with admitted(state.registry, state.limiter, who, body.model, CHAT, id_prefix="resp_") as (served, admission):
        # The stored context is read once the model is found and the request counted: a bogus model or
        # a spent limit reads nothing.
        context = await in_thread(ctx.load, state.sessions, who, body, now)
        chat = await ctx.plan(body, context, served, admission, max_n=state.settings.max_n)
        run = state.pipeline.run(chat.generation)
        await run.__aenter__()
    frame = render.frame(body, chat.generation.request_id, served.id, created_at=int(now.timestamp()))
    if body.background:
        return await _in_background(request, run, chat, frame, body, context, who)
    saving = _Saving(state, who, body, context, now)
    if body.stream:
        return await gen.stream_response(run, lambda events: _stream(run, events, chat, frame, body, saving))
    result = await gen.collected(request, run, chat.tools)
    if result is None:
        return Response(status_code=499)
    choice = result.choices[0]
    output = render.output_items(choice, with_logprobs=req.wants_logprobs(body))
    final = render.finish(frame, output, choice.finish_reason, render.usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens))
    await saving(final)
    return JSONResponse(final, headers=run.rate_limit_headers)


def _background(request: Request) -> BackgroundResponses:
    """This app's background responses (made on first use: nothing else needs them)."""
    holder = request.app.state
    if not hasattr(holder, "background_responses"):
        holder.background_responses = BackgroundResponses()
    return holder.background_responses  # type: ignore[no-any-return]


async def _in_background(
    request: Request, run: GenerationRun, chat: ChatPlan, frame: dict[str, Any], body: CreateResponse, context: ctx.Context, who: Principal
) -> Response:
    """Store the response `queued` and run it detached from this request; answer at once, or follow
    its events (a client that leaves stops following, not the response)."""
    state = app_state(request)
    queued = {**frame, "status": "queued"}
    background = _background(request)
    background.reserve(frame["id"])  # runs here from before it is stored: a read meanwhile must not fail it
    try:
        await in_thread(
            functools.partial(ctx.save, replica_id=state.ledger_writer.replica_id),
            state.sessions, who, queued, context, utcnow(), state.settings.stored_objects_retention_days,
        )
    except BaseException:
        background.release(frame["id"])
        await run.settle()
        raise
    renderer = ResponseEvents(frame, with_logprobs=req.wants_logprobs(body))
    log = EventLog()
    log.add(queued_events(renderer, queued))

    async def save(response: dict[str, Any], events: list[dict[str, Any]] | None) -> None:
        with anyio.CancelScope(shield=True):  # a cancelled task still records how it ended
            await anyio.to_thread.run_sync(ctx.update, state.sessions, who, response, context, events)

    async def still_running() -> bool:
        return await anyio.to_thread.run_sync(ctx.still_running, state.sessions, who, frame["id"])

    work = run_detached(run, chat.tools, renderer, log, save=save, still_running=still_running, deadline_seconds=_deadline(state))
    background.start(frame["id"], log, work)
    if body.stream:
        return _event_stream(_sse(log.follow(-1)), run.rate_limit_headers)
    return JSONResponse(queued, headers=run.rate_limit_headers)


def _deadline(state: AppState) -> float:
    """How long a background run may take: as long as a request, and ending (its final save retried
    included) before its concurrency lease does, so its slot is never freed while it still runs."""
    settings = state.settings
    return max(1.0, min(settings.request_timeout_seconds, settings.limits_lease_seconds - sum(FINAL_SAVE_DELAYS)))


async def _sse(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async for event in events:
        yield sse(event)


def _event_stream(body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> StreamingResponse:
    response = StreamingResponse(body, media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    response.headers.update(headers or {})
    return response


class _Saving:
    """Stores a finished response (when it asked for `store`, or continues a conversation) on a worker thread."""

    def __init__(self, state: AppState, who: Principal, body: CreateResponse, context: ctx.Context, now: datetime) -> None:
        self._args = (state.sessions, who)
        self._context, self._now, self._days = context, now, state.settings.stored_objects_retention_days
        self._needed = body.store or context.conversation_id is not None

    async def __call__(self, response: dict[str, Any]) -> None:
        """Store it; a store that fails is a 503 the SDKs do not retry (`x-should-retry: false`): a
        retry would generate, and bill, the answer again."""
        if not self._needed:
            return
        try:
            await in_thread(ctx.save, *self._args, response, self._context, self._now, self._days)
        except SQLAlchemyError as exc:
            logger.exception("responses: could not store %s", response["id"])
            raise ServiceUnavailable(NOT_STORED, headers={"x-should-retry": "false"}) from exc


async def _stream(
    run: GenerationRun, events: AsyncIterator[EngineEvent], chat: ChatPlan, frame: dict[str, Any], body: CreateResponse, saving: _Saving
) -> AsyncIterator[bytes]:
    renderer = ResponseEvents(frame, with_logprobs=req.wants_logprobs(body))
    assembler = Assembler(1, chat.tools)
    try:
        for event in renderer.start():
            yield sse(event)
        async for engine_event in events:
            for piece in assembler.feed(engine_event):
                for event in renderer.feed(piece):
                    yield sse(event)
        await run.settle()
        if not run.recorded:
            message = "The response is complete, but its usage could not be recorded yet; it will be recorded when the database is back."
            for event in renderer.failed("server_error", message, None, render.failed(frame, "server_error", message, renderer.output)):
                yield sse(event)
            return
        usage = render.usage(run.prompt_tokens, run.completion_tokens, run.cached_tokens)
        final = render.finish(frame, renderer.output, renderer.finish_reason, usage)
        await saving(final)
        yield sse(renderer.finished(final))
    except APIError as exc:
        # Headers are gone already: report the failure as events, then close.
        code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        failed = render.failed(frame, code, str(exc.message), renderer.output)
        for event in renderer.failed(exc.code, str(exc.message), exc.param, failed):
            yield sse(event)
    finally:
        await run.settle()


def _response_id(response_id: str) -> str:
    try:
        return stored_text(response_id)
    except ValueError:
        raise InvalidRequest("Invalid response id.", param="response_id", code="invalid_value") from None


@router.get("/v1/responses/{response_id:response_id}", response_model=ResponseObject, responses=ERRORS)
async def retrieve_response(response_id: str, request: Request, who: Principal = Depends(principal)) -> Response:
    """The stored response (`include[]` is accepted: what a response includes was decided when it was
    created); with `stream=true`, a background response's events after `starting_after`."""
    state = app_state(request)
    response_id = _response_id(response_id)
    if request.query_params.get("stream") in ("true", "1"):
        return await _replay(request, state, who, response_id, _starting_after(request.query_params.get("starting_after")))
    return JSONResponse(await _get(request, state, who, response_id))


async def _get(request: Request, state: AppState, who: Principal, response_id: str) -> dict[str, Any]:
    """The stored response; one still running in the store is marked failed when its replica stopped
    (a stale heartbeat) or is this replica, which has no task for it (its final state was not stored)."""
    now = utcnow()
    get = functools.partial(
        ctx.get,
        alive_since=now - timedelta(seconds=STALE_HEARTBEATS * state.settings.ledger_heartbeat_seconds),
        this_replica=state.ledger_writer.replica_id,
        runs_here=_background(request).runs,
    )
    return await in_thread(get, state.sessions, who, response_id, now)


def _integer(value: str, name: str, lowest: int, highest: int | None = None) -> int:
    """An ASCII decimal integer of at most 12 digits in [lowest, highest], else a 400 (never a 500,
    nor another script's digits)."""
    if re.fullmatch(r"-?[0-9]{1,12}", value) is None or int(value) < lowest or (highest is not None and int(value) > highest):
        bound = f"from {lowest}" if highest is None else f"from {lowest} to {highest}"
        raise InvalidRequest(f"Invalid '{name}': an integer {bound}.", param=name, code="invalid_value")
    return int(value)


def _starting_after(value: str | None) -> int:
    return -1 if value is None else _integer(value, "starting_after", -1)


async def _replay(request: Request, state: AppState, who: Principal, response_id: str, after: int) -> StreamingResponse:
    """A background response's events after `after`: live from this replica's log while it runs here;
    else, once it has finished (polled on any replica), from the store."""
    await in_thread(ctx.events, state.sessions, who, response_id, utcnow())  # 404 and 400 before the stream starts
    log = _background(request).log(response_id)
    if log is not None:
        return _event_stream(_sse(log.follow(after)))

    async def stored() -> AsyncIterator[bytes]:
        deadline = anyio.current_time() + REPLAY_WAIT_SECONDS
        while anyio.current_time() < deadline:
            response = await _get(request, state, who, response_id)
            if response["status"] not in ctx.RUNNING:
                break
            await anyio.sleep(REPLAY_POLL_SECONDS)
        response, events = await in_thread(ctx.events, state.sessions, who, response_id, utcnow())
        for payload in events or []:
            if payload["sequence_number"] > after:
                yield sse((payload["type"], payload))
        last = _missing_terminal(response, events or [], after)
        if last is not None:
            yield sse(last)

    return _event_stream(stored())


TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}


def _missing_terminal(response: dict[str, Any], events: list[dict[str, Any]], after: int) -> Event | None:
    """The event that ends a stream whose stored events do not (a response marked failed when its
    replica stopped has none after those it had stored), built from the stored response."""
    kind = TERMINAL.get(response["status"])
    if kind is None or any(payload["type"] in TERMINAL.values() for payload in events):
        return None
    sequence = max([after, *(payload["sequence_number"] for payload in events)]) + 1
    return kind, {"type": kind, "response": response, "sequence_number": sequence}


@router.post("/v1/responses/{response_id:response_id}/cancel", response_model=ResponseObject, responses=ERRORS)
async def cancel_response(response_id: str, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    """Cancel a background response (idempotent: a finished or cancelled one is returned as it is)."""
    state = app_state(request)
    response = await in_thread(ctx.cancel, state.sessions, who, _response_id(response_id), utcnow())
    if response["status"] == "cancelled":
        _background(request).cancel(response["id"])
    return JSONResponse(response)


@router.delete("/v1/responses/{response_id:response_id}", response_model=DeletedResponse, responses=ERRORS)
async def delete_response(response_id: str, request: Request, who: Principal = Depends(principal)) -> DeletedResponse:
    """Delete a stored response; one still running in the background here stops (its run settles as cancelled)."""
    state = app_state(request)
    await in_thread(ctx.delete, state.sessions, who, _response_id(response_id), utcnow())
    _background(request).cancel(response_id)
    return DeletedResponse(id=response_id)


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    return _integer(value, "limit", 1, MAX_PAGE)


@router.get("/v1/responses/{response_id:response_id}/input_items", response_model=ItemList, responses=ERRORS)
async def list_input_items(response_id: str, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    state = app_state(request)
    query = request.query_params
    limit = _limit(query.get("limit"))
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid 'order': 'asc' or 'desc'.", param="order", code="invalid_value")
    after = query.get("after")
    items = await in_thread(ctx.input_items, state.sessions, who, _response_id(response_id), utcnow())
    return JSONResponse(page(items, limit=limit, order=order, after=after))


@router.post("/v1/responses/input_tokens", response_model=InputTokens, responses=ERRORS)
async def count_input_tokens(body: CreateResponse, request: Request, who: Principal = Depends(principal)) -> InputTokens:
    """The tokens the response's context would take, counted by planning it (nothing runs)."""
    state = app_state(request)
    req.check(body)
    async with admitted(state.registry, state.limiter, who, body.model, CHAT, id_prefix="resp_") as (served, admission):
        context = await in_thread(ctx.load, state.sessions, who, body, utcnow())
        chat = await ctx.plan(body, context, served, admission, max_n=state.settings.max_n)
    generation = chat.generation
    count = len(generation.prompt_tokens) if generation.upstream is None else generation.upstream.prompt_estimate
    return InputTokens(input_tokens=count)


@router.post("/v1/responses/compact", response_model=CompactedResponse, responses=ERRORS)
async def compact_response(body: CompactRequest, request: Request, who: Principal = Depends(principal)) -> Response:
    """The context (`input`, the `previous_response_id` chain) compacted to a budget: older turns
    summarised by the model or dropped, the newest turn kept verbatim (`responses.compaction`)."""
    state = app_state(request)
    if body.ignored_fields():
        logger.info("responses.compact: ignoring unsupported fields %s", ", ".join(body.ignored_fields()))
    now = utcnow()
    async with admitted(state.registry, state.limiter, who, body.model, CHAT, id_prefix="resp_") as (served, admission):
        context = await in_thread(ctx.load, state.sessions, who, compaction.as_create(body), now)
        split = await compaction.plan(body, context, served, admission, max_n=state.settings.max_n)
        if split.summary is None:
            return JSONResponse(compaction.compacted(new_id("resp_"), int(now.timestamp()), split, None, render.usage(0, 0, 0)))
        run = state.pipeline.run(split.summary.generation)
        await run.__aenter__()
    try:
        result = await gen.until_disconnect(request, collect(run))
    except gen.ClientDisconnected:
        return Response(status_code=499)  # nobody is listening; the ledger has the partial usage
    finally:
        await run.settle()
    usage = render.usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens)
    summary = (result.choices[0].content or "").strip() or None
    response_id = split.summary.generation.request_id
    return JSONResponse(compaction.compacted(response_id, int(now.timestamp()), split, summary, usage), headers=run.rate_limit_headers)
