"""A response's context: the stored chain before it and its own input, planned to fit, then stored.

`load` (blocking; run it on a worker thread) rebuilds everything a `previous_response_id` chain held
— each earlier response's input items, then its output items (messages, function calls), oldest
first — and resolves this request's `input` (item references included). The chain is bounded
before any item is read: a chain longer than `MAX_CHAIN` responses, or a context of more than
`MAX_CONTEXT_ITEMS` items, is a 400.

`plan` plans the generation; with `truncation: "auto"` a context too long for the model loses its
oldest items until it fits (OpenAI's documented behaviour), with `disabled` it is the
context-length 400. `save` stores the finished response with its input items in one transaction,
before the client is told the response is complete, so a follow-up works at once on any replica.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from modelhost.auth import Principal
from modelhost.engine.registry import ServedModel
from modelhost.errors import ContextLengthExceeded, InvalidRequest, NotFound
from modelhost.limits import Admission
from modelhost.pipeline.planning import ChatPlan, plan_chat
from modelhost.protocol.responses import CreateResponse
from modelhost.responses import items as items_mod
from modelhost.responses import request as req
from modelhost.store import conversations
from modelhost.store import responses as store
from modelhost.store import tenancy

MAX_CHAIN = 256  # responses in one previous_response_id chain
MAX_CONTEXT_ITEMS = 8192
MAX_TOKEN_CHARACTERS = 64  # longer than any token of any vocabulary we serve
OPERATION = "responses"  # the ledger's name for this endpoint


@dataclass(frozen=True)
class Context:
    earlier: list[dict[str, Any]]  # the chain's or the conversation's items, oldest first
    input: list[dict[str, Any]]  # this request's input, as it is stored
    chain_length: int  # of the new response, itself included
    conversation_id: str | None = None  # the conversation this turn's input and output are added to

    @property
    def items(self) -> list[dict[str, Any]]:
        return [*self.earlier, *self.input]


def previous_not_found(response_id: str) -> NotFound:
    return NotFound(f"Previous response with id '{response_id}' not found.", param="previous_response_id")


def _chain_items(session: Session, who: Principal, previous_id: str, now: datetime) -> tuple[list[dict[str, Any]], int]:
    length = store.chain_length(session, who.organization_id, who.project_id, previous_id, now)
    if length is None:
        raise previous_not_found(previous_id)
    if length >= MAX_CHAIN:
        raise InvalidRequest(
            f"The chain of 'previous_response_id' is {length} responses long; at most {MAX_CHAIN - 1} can be continued. "
            "Start a new chain with the context you need as input.",
            param="previous_response_id",
            code="invalid_value",
        )
    rows = store.chain(session, who.organization_id, who.project_id, previous_id, now)
    by_response: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for response_id, role, item in store.items(session, [r.id for r in rows]):
        by_response.setdefault((response_id, role), []).append(item)
    earlier: list[dict[str, Any]] = []
    for row in rows:
        earlier += by_response.get((row.id, store.INPUT), []) + by_response.get((row.id, store.OUTPUT), [])
    return earlier, length + 1


def _check_not_held(earlier: list[dict[str, Any]], own: list[dict[str, Any]]) -> None:
    """An input item the conversation already holds is refused now, not when the turn is added after the model ran."""
    held = {item.get("id") for item in earlier}
    for i, item in enumerate(own):
        if item.get("id") in held:
            raise InvalidRequest(
                f"Duplicate item found with id '{item['id']}': the conversation already holds it.", param=f"input[{i}]", code="invalid_value"
            )


def load(sessions: sessionmaker[Session], who: Principal, body: CreateResponse, now: datetime) -> Context:
    """The chain or conversation before the new response, and its own input (blocking).

    Item references name items of the project's stored responses, or of the conversation."""
    conversation_id = req.conversation_id(body)
    with sessions() as session:
        earlier: list[dict[str, Any]] = []
        length = 1
        if body.previous_response_id is not None:
            earlier, length = _chain_items(session, who, body.previous_response_id, now)
        if conversation_id is not None:
            earlier = [dict(i) for i in conversations.conversation_items(session, who.organization_id, who.project_id, conversation_id)]
        in_conversation = {str(item.get("id")): item for item in earlier} if conversation_id is not None else {}

        def find(ids: Sequence[str]) -> dict[str, dict[str, Any]]:
            found = store.find_items(session, who.organization_id, who.project_id, ids, now)
            return {**found, **{i: in_conversation[i] for i in ids if i in in_conversation}}

        own = items_mod.input_items(body.input, find)
        _check_not_held(earlier if conversation_id is not None else [], own)
    if len(earlier) + len(own) > MAX_CONTEXT_ITEMS:
        raise InvalidRequest(
            f"The context holds {len(earlier) + len(own)} items; at most {MAX_CONTEXT_ITEMS} are allowed.",
            param="previous_response_id" if earlier else "input",
            code="invalid_value",
        )
    if not earlier and not own:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    return Context(earlier, own, length, conversation_id)


def without_oldest(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`items` less its oldest eighth (at least one), and less any call outputs left without their call."""
    rest = items[max(1, len(items) // 8) :]
    while rest and rest[0].get("type") == "function_call_output":
        rest = rest[1:]
    return rest


def characters(item: dict[str, Any]) -> int:
    """The length of the item's text as the model reads it (content or output, call arguments, a summary)."""
    text = items_mod.item_text(item.get("content", item.get("output", "")))
    return len(text) + len(str(item.get("arguments", ""))) + len(str(item.get("encrypted_content", "")))


def cannot_fit(items: list[dict[str, Any]], context_length: int) -> bool:
    """Whether the items' text is too long for the context whatever the tokenizer (no token is
    longer than `MAX_TOKEN_CHARACTERS`): such a context is refused, or truncated, before it is tokenized."""
    return sum(characters(item) for item in items) > context_length * MAX_TOKEN_CHARACTERS


async def plan(body: CreateResponse, context: Context, served: ServedModel, admission: Admission, *, max_n: int) -> ChatPlan:
    """The generation's plan; with `truncation: auto`, the oldest items dropped until the context fits.

    A context far too long is dropped from (auto) or refused (disabled) by its length in characters
    first, so a long chain costs one tokenization, not one per attempt."""
    assert served.engine is not None, "responses are planned only for a model that generates"
    items = context.items
    context_length = served.engine.context_length
    if body.truncation == "auto":
        while len(items) > 1 and cannot_fit(items, context_length):
            items = without_oldest(items)
    elif cannot_fit(items, context_length):
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens, and your input is far longer. "
            "Please reduce the length of the input, or set 'truncation' to 'auto'.",
            param="input",
        )
    while True:
        chat = req.chat_input(body, items_mod.to_turns(items))
        try:
            return await plan_chat(chat, served, admission, max_n=max_n, operation=OPERATION)
        except ContextLengthExceeded:
            if body.truncation != "auto" or len(items) <= 1:
                raise
            items = without_oldest(items)


def save(
    sessions: sessionmaker[Session],
    who: Principal,
    response: dict[str, Any],
    context: Context,
    now: datetime,
    retention_days: int,
    *,
    replica_id: str | None = None,
) -> None:
    """Store the response (when it asked for `store`) and, once it is finished, add its turn to its
    conversation (when it has one), in one transaction (blocking). A queued background response is
    stored with the replica that runs it."""
    with sessions() as session:
        if response.get("store", True):
            store.add_response(
                session,
                who.organization_id,
                who.project_id,
                response,
                context.input,
                created_at=now,
                expires_at=now + timedelta(days=retention_days),
                chain_length=context.chain_length,
                replica_id=replica_id,
            )
        if response["status"] in FINISHED:
            _add_turn(session, who, response, context)
        session.commit()


FINISHED = ("completed", "incomplete")  # an answer that goes into the conversation
RUNNING = ("queued", "in_progress")


def _add_turn(session: Session, who: Principal, response: dict[str, Any], context: Context) -> None:
    if context.conversation_id is not None:
        turn = [*context.input, *response.get("output", [])]
        conversations.append_items(session, who.organization_id, who.project_id, context.conversation_id, turn)


def update(
    sessions: sessionmaker[Session], who: Principal, response: dict[str, Any], context: Context, events: list[dict[str, Any]] | None = None
) -> bool:
    """A background response's new state (with its events once finished), unless it was cancelled
    (or failed) meanwhile (blocking)."""
    with sessions() as session:
        if not store.update_response(session, who.organization_id, who.project_id, response, from_statuses=RUNNING, events=events):
            return False
        if response["status"] in FINISHED:
            _add_turn(session, who, response, context)
        session.commit()
        return True


def still_running(sessions: sessionmaker[Session], who: Principal, response_id: str) -> bool:
    """Whether the response is still queued or in progress in the store (blocking)."""
    with sessions() as session:
        return store.status(session, who.organization_id, who.project_id, response_id, tenancy.utcnow()) in RUNNING


def cancel(sessions: sessionmaker[Session], who: Principal, response_id: str, now: datetime) -> dict[str, Any]:
    """Mark a background response cancelled, if it is still running; its object either way (blocking).

    400 for a response that was not made in the background, as OpenAI answers."""
    with sessions() as session:
        response = store.get_response(session, who.organization_id, who.project_id, response_id, now)
        if not response.get("background"):
            raise InvalidRequest("Only responses created with background=true can be cancelled.", param="response_id", code="invalid_value")
        if response["status"] in RUNNING:
            cancelled = {**response, "status": "cancelled"}
            if store.update_response(session, who.organization_id, who.project_id, cancelled, from_statuses=RUNNING):
                session.commit()
                return cancelled
            response = store.get_response(session, who.organization_id, who.project_id, response_id, now)
        return response


def get(
    sessions: sessionmaker[Session],
    who: Principal,
    response_id: str,
    now: datetime,
    *,
    alive_since: datetime | None = None,
    this_replica: str | None = None,
    runs_here: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """The stored response; a background one that no replica runs any more is marked failed now
    rather than left running forever (blocking). No replica runs it when its replica has not beaten
    its heartbeat since `alive_since`, or is `this_replica` and that does not run it (`runs_here`):
    its run ended without storing how."""
    with sessions() as session:
        response = store.get_response(session, who.organization_id, who.project_id, response_id, now)
        replica = store.running_replica(session, who.organization_id, who.project_id, response_id, now)
        if replica is None:
            return response
        if replica == this_replica and runs_here is not None:
            if runs_here(response_id):
                return response
            message = "The server running this response could not store how it ended."
        elif alive_since is None or store.replica_alive(session, replica, alive_since):
            return response
        else:
            message = "The server running this response stopped before it finished."
        failed = {**response, "status": "failed", "error": {"code": "server_error", "message": message}}
        if store.update_response(session, who.organization_id, who.project_id, failed, from_statuses=RUNNING):
            session.commit()
            return failed
        return store.get_response(session, who.organization_id, who.project_id, response_id, now)


def events(
    sessions: sessionmaker[Session], who: Principal, response_id: str, now: datetime
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """A background response and its stored events, None while it runs (blocking); 400 for a response
    not made in the background, which has no stream to read again."""
    with sessions() as session:
        response, stored = store.response_events(session, who.organization_id, who.project_id, response_id, now)
    if not response.get("background"):
        raise InvalidRequest("Only responses created with background=true can be streamed again.", param="stream", code="invalid_value")
    return response, stored


def delete(sessions: sessionmaker[Session], who: Principal, response_id: str, now: datetime) -> None:
    with sessions() as session:
        store.delete_response(session, who.organization_id, who.project_id, response_id, now)
        session.commit()


def input_items(sessions: sessionmaker[Session], who: Principal, response_id: str, now: datetime) -> list[dict[str, Any]]:
    """The response's own input items, in order (404 as for the response itself)."""
    with sessions() as session:
        store.get_response(session, who.organization_id, who.project_id, response_id, now)
        return [item for _, _, item in store.items(session, [response_id], store.INPUT)]
