"""A response's context: the stored chain before it and its own input, planned to fit, then stored.

`load` (blocking; run it on a worker thread) rebuilds everything a `previous_response_id` chain held
— each earlier response's input items, then its output items (messages, function calls), oldest
first — and resolves this request's `input` (item references included). What is stored is bounded
before any item is read: a chain longer than `MAX_CHAIN` responses, or a chain or conversation of
more than `MAX_CONTEXT_ITEMS` items or `MAX_CONTEXT_CHARACTERS` characters of item JSON, is a 400
(the chain's size is summed by the database, a conversation keeps its own). Callers load a context
once the request is admitted: an unknown model or a spent rate limit costs no read.

`plan` plans the generation; with `truncation: "auto"` a context too long for the model loses its
oldest items until it fits (OpenAI's documented behaviour): each item is tokenized once and the
oldest dropped by their summed counts, then the chat is planned (and, if the template's own tokens
still overflow it, planned again with fewer items, at most `PLAN_ATTEMPTS` times in all). With
`disabled` it is the context-length 400. `save` stores the finished response with its input items in one transaction,
before the client is told the response is complete, so a follow-up works at once on any replica.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from anyio import to_thread
from sqlalchemy import Text, cast, func, select
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
#: The most characters of item JSON a context may hold (8 MiB of text, a constant: a conversation holds
#: no more, and a chain is refused past it before its items are read).
MAX_CONTEXT_CHARACTERS = conversations.MAX_CHARACTERS_PER_CONVERSATION
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


def too_large(items: int, characters: int, param: str) -> InvalidRequest | None:
    """The 400 for a context of `items` items and `characters` characters of item JSON, if it is over a bound."""
    if items > MAX_CONTEXT_ITEMS:
        return InvalidRequest(
            f"The context holds {items} items; at most {MAX_CONTEXT_ITEMS} are allowed.", param=param, code="invalid_value"
        )
    if characters > MAX_CONTEXT_CHARACTERS:
        return InvalidRequest(
            f"The context holds {characters} characters of items; at most {MAX_CONTEXT_CHARACTERS} are allowed. "
            "Start a new conversation or chain with the context you need as input.",
            param=param,
            code="invalid_value",
        )
    return None


def _refuse_if_too_large(items: int, characters: int, param: str) -> None:
    error = too_large(items, characters, param)
    if error is not None:
        raise error


def _chain_size(session: Session, response_ids: Sequence[str]) -> tuple[int, int]:
    """The items of the responses and the characters of their JSON, counted by the database (nothing is read)."""
    table = store.StoredResponseItem
    count, characters = session.execute(
        select(func.count(), func.coalesce(func.sum(func.length(cast(table.item, Text))), 0)).where(table.response_id.in_(response_ids))
    ).one()
    return int(count), int(characters)


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
    ids = store.chain(session, who.organization_id, who.project_id, previous_id, now)
    _refuse_if_too_large(*_chain_size(session, ids), "previous_response_id")
    by_response: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for response_id, role, item in store.items(session, ids):
        by_response.setdefault((response_id, role), []).append(item)
    earlier: list[dict[str, Any]] = []
    for response_id in ids:
        earlier += by_response.get((response_id, store.INPUT), []) + by_response.get((response_id, store.OUTPUT), [])
    return earlier, length + 1


def _conversation_items(session: Session, who: Principal, conversation_id: str) -> list[dict[str, Any]]:
    """The conversation's items, refused (400) before they are read when there are too many or too long."""
    conversation = conversations.found_conversation(session, who.organization_id, who.project_id, conversation_id)
    _refuse_if_too_large(conversation.item_count, conversation.total_characters, "conversation")
    return [dict(i) for i in conversations.conversation_items(session, who.organization_id, who.project_id, conversation_id)]


def _check_not_held(earlier: list[dict[str, Any]], own: list[dict[str, Any]]) -> None:
    """An input item the conversation already holds, or that the input holds twice (an id sent twice, two
    references to one item), is refused now, not when the turn is added after the model ran."""
    held = {item.get("id") for item in earlier}
    seen: set[object] = set()
    for i, item in enumerate(own):
        item_id = item.get("id")
        if item_id in held:
            raise InvalidRequest(
                f"Duplicate item found with id '{item_id}': the conversation already holds it.", param=f"input[{i}]", code="invalid_value"
            )
        if item_id in seen:
            raise InvalidRequest(
                f"Duplicate item found with id '{item_id}': the input holds it twice. Remove duplicate items from your input and try again.",
                param=f"input[{i}]",
                code="invalid_value",
            )
        seen.add(item_id)


def load(sessions: sessionmaker[Session], who: Principal, body: CreateResponse, now: datetime) -> Context:
    """The chain or conversation before the new response, and its own input (blocking).

    Item references name items of the project's stored responses, or of the conversation. What is
    stored is bounded (`MAX_CONTEXT_ITEMS`, `MAX_CONTEXT_CHARACTERS`) before it is read."""
    conversation_id = req.conversation_id(body)
    with sessions() as session:
        earlier: list[dict[str, Any]] = []
        length = 1
        if body.previous_response_id is not None:
            earlier, length = _chain_items(session, who, body.previous_response_id, now)
        if conversation_id is not None:
            earlier = _conversation_items(session, who, conversation_id)
        in_conversation = {str(item.get("id")): item for item in earlier} if conversation_id is not None else {}

        def find(ids: Sequence[str]) -> dict[str, dict[str, Any]]:
            found = store.find_items(session, who.organization_id, who.project_id, ids, now)
            return {**found, **{i: in_conversation[i] for i in ids if i in in_conversation}}

        own = items_mod.input_items(body.input, find)
        if conversation_id is not None:
            _check_not_held(earlier, own)
    everything = [*earlier, *own]
    param = "input" if not earlier else "conversation" if conversation_id is not None else "previous_response_id"
    _refuse_if_too_large(len(everything), sum(conversations.item_characters(item) for item in everything), param)
    if not earlier and not own:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    return Context(earlier, own, length, conversation_id)


def without_oldest(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`items` less its oldest eighth (at least one), and less any call outputs left without their call."""
    return _from(items, max(1, len(items) // 8))


def _from(items: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """`items` from `start` on, less any call outputs left at its head without their call."""
    while start < len(items) and items[start].get("type") == "function_call_output":
        start += 1
    return items[start:]


def text(item: dict[str, Any]) -> str:
    """The item's text as the model reads it (content or output, a call's name and arguments, a summary)."""
    content = items_mod.item_text(item.get("content", item.get("output", "")))
    return "".join((content, str(item.get("name", "")), str(item.get("arguments", "")), str(item.get("encrypted_content", ""))))


def characters(item: dict[str, Any]) -> int:
    """The length of the item's text as the model reads it."""
    return len(text(item))


def count_tokens(served: ServedModel, value: str) -> int:
    """The tokens of `value` (blocking). An engine that forwards requests has no tokenizer here: 4 characters a token, rounded up."""
    assert served.engine is not None
    return -(-len(value) // 4) if served.engine.forwards_requests else len(served.engine.tokenize(value))


def cannot_fit(items: list[dict[str, Any]], context_length: int) -> bool:
    """Whether the items' text is too long for the context whatever the tokenizer (no token is
    longer than `MAX_TOKEN_CHARACTERS`): such a context is refused, or truncated, before it is tokenized."""
    return sum(characters(item) for item in items) > context_length * MAX_TOKEN_CHARACTERS


TEMPLATE_TOKENS_PER_ITEM = 16  # more than a chat template adds around one message (role, separators: 5 to 12)
PLAN_ATTEMPTS = 3  # plans of a truncated context: the first, then two with fewer items if the template overflowed it


def newest_that_fit(items: list[dict[str, Any]], served: ServedModel, budget: int) -> list[dict[str, Any]]:
    """The newest items whose tokens (each item counted once, with `TEMPLATE_TOKENS_PER_ITEM`) sum to at
    most `budget`; none if the newest alone does not fit (blocking: it tokenizes)."""
    counts = [count_tokens(served, text(item)) + TEMPLATE_TOKENS_PER_ITEM for item in items]
    start, total = 0, sum(counts)
    while start < len(items) and total > budget:
        total -= counts[start]
        start += 1
    return _from(items, start)


def instruction_tokens(instructions: str | None, served: ServedModel) -> int:
    """The tokens `instructions` take (blocking); the context-length 400 naming `instructions` when they
    alone leave no room for any input."""
    assert served.engine is not None
    if not instructions:
        return 0
    context_length = served.engine.context_length
    if len(instructions) > context_length * MAX_TOKEN_CHARACTERS:
        tokens = context_length  # too long whatever the tokenizer: not tokenized
    else:
        tokens = count_tokens(served, instructions) + TEMPLATE_TOKENS_PER_ITEM
    if tokens >= context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens, and the instructions alone take {tokens}. "
            "Please shorten the instructions.",
            param="instructions",
        )
    return tokens


def _truncated(body: CreateResponse, items: list[dict[str, Any]], served: ServedModel) -> list[dict[str, Any]]:
    """The newest items that fit the context beside the instructions (blocking: it tokenizes)."""
    assert served.engine is not None
    context_length = served.engine.context_length
    while len(items) > 1 and cannot_fit(items, context_length):
        items = without_oldest(items)  # by characters: far too long whatever the tokenizer
    # The template's generation prompt (the assistant's header) counts as one more item.
    budget = context_length - instruction_tokens(body.instructions, served) - TEMPLATE_TOKENS_PER_ITEM
    # Not even the newest item fits: it is planned alone, for the context-length 400 that says so.
    return newest_that_fit(items, served, budget) or items[-1:]


async def plan(body: CreateResponse, context: Context, served: ServedModel, admission: Admission, *, max_n: int) -> ChatPlan:
    """The generation's plan; with `truncation: auto`, the oldest items dropped until the context fits.

    A context far too long is refused (disabled) by its length in characters before it is tokenized;
    a truncated one costs one token count per item and one plan (at most `PLAN_ATTEMPTS`)."""
    assert served.engine is not None, "responses are planned only for a model that generates"
    items = context.items
    context_length = served.engine.context_length
    if body.truncation != "auto":
        if cannot_fit(items, context_length):
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context_length} tokens, and your input is far longer. "
                "Please reduce the length of the input, or set 'truncation' to 'auto'.",
                param="input",
            )
        return await _plan_items(body, items, served, admission, max_n=max_n)
    items = await to_thread.run_sync(_truncated, body, items, served)
    for _ in range(PLAN_ATTEMPTS - 1):
        try:
            return await _plan_items(body, items, served, admission, max_n=max_n)
        except ContextLengthExceeded:
            if len(items) <= 1:
                raise
            items = without_oldest(items)
    return await _plan_items(body, items, served, admission, max_n=max_n)


async def _plan_items(body: CreateResponse, items: list[dict[str, Any]], served: ServedModel, admission: Admission, *, max_n: int) -> ChatPlan:
    return await plan_chat(req.chat_input(body, items_mod.to_turns(items)), served, admission, max_n=max_n, operation=OPERATION)


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
