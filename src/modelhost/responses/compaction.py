"""`POST /v1/responses/compact`: a context reduced to a token budget, as items the next create takes.

The context is what `POST /v1/responses` would read for the same `input` and `previous_response_id`
(`context.load`: the chain rebuilt, item references resolved). With a budget of half the model's
context window (the other half is left for the turns that follow), `plan` splits it:

1. **Kept verbatim**: the newest turn — the last user message and every item after it — as far as
   it fits in half the budget, newest items first (a call's output is never kept without its call;
   a newest turn too long to keep whole keeps only its newest items).
2. **Summarised**: every older item, by the model, in one generation of at most
   ``min(256, about a quarter of the older items' tokens, the budget left after the kept items)``
   tokens. The summary prompt is the request's `instructions`, the older items and a request to
   summarise them; a compaction item sent back as input is summarised again with the rest.
3. **Dropped**: older items the summary prompt cannot hold (the oldest go first, as with
   `truncation: "auto"`), and all older items when the budget leaves no room for a summary of at
   least 16 tokens or the model writes an empty one.

The output is a `compaction` item carrying the summary (its `encrypted_content` is the summary's
plain text: this server encrypts nothing it hands back) followed by the kept items; with nothing
older than the newest turn there is nothing to compact: the items come back as they are, no
generation runs and usage is zero. The summary is one generation on the pipeline (admitted,
planned, run, settled): one ledger row with operation ``responses``, so it counts in the Usage
API's completions. Nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from anyio import to_thread

from modelhost.engine.registry import ServedModel
from modelhost.errors import ContextLengthExceeded
from modelhost.ids import new_id
from modelhost.limits import Admission
from modelhost.pipeline.inputs import ChatInput, Sampling, Turn
from modelhost.pipeline.planning import ChatPlan, plan_chat
from modelhost.protocol.responses import COMPACTION_ID, CompactedResponse, CompactRequest, CreateResponse
from modelhost.responses import context as ctx
from modelhost.responses import items as items_mod
from modelhost.responses import request as req

Item = dict[str, Any]

SUMMARY_MAX_TOKENS = 256
MIN_SUMMARY_TOKENS = 16
CHARACTERS_PER_SUMMARY_TOKEN = 16  # about 4 characters a token, and a summary a quarter as long as its text
SUMMARY_REQUEST = (
    "Summarize the conversation above so that it can continue from the summary alone: the user's goals, "
    "the facts and decisions so far, the function calls made and their results, and what is still open. "
    "Write only the summary."
)


@dataclass(frozen=True)
class Compaction:
    """The split of a context: what is kept, what the summary reads, how many items were dropped."""

    kept: list[Item]
    summarised: list[Item]
    dropped: int
    summary: ChatPlan | None  # the summary's generation; None: no summary (nothing older, or no room)


def as_create(body: CompactRequest) -> CreateResponse:
    """The create request whose context the compaction reads (so the chain is loaded and bounded alike).

    Built from the fields as parsed, not validated again: the parsed items are models already."""
    return CreateResponse.model_construct(
        model=body.model, input=body.input, previous_response_id=body.previous_response_id, instructions=body.instructions, store=False
    )


def _newest_turn_start(items: Sequence[Item]) -> int:
    for i in range(len(items) - 1, -1, -1):
        if items[i].get("type") == "message" and items[i].get("role") == "user":
            return i
    return 0


def _kept(items: Sequence[Item], served: ServedModel, limit: int) -> tuple[int, int]:
    """Where the kept items start, and their tokens: the newest turn's items, newest first, while they
    fit in `limit` tokens (blocking: it tokenizes). An item whose characters alone exceed what is left
    is not tokenized (no token is longer than `context.MAX_TOKEN_CHARACTERS`)."""
    start, counts = len(items), dict[int, int]()
    for i in range(len(items) - 1, _newest_turn_start(items) - 1, -1):
        text, used = ctx.text(items[i]), sum(counts.values())
        if len(text) > (limit - used) * ctx.MAX_TOKEN_CHARACTERS:
            break
        tokens = ctx.count_tokens(served, text)
        if used + tokens > limit:
            break
        start, counts[i] = i, tokens
    while start < len(items) and items[start].get("type") == "function_call_output":
        start += 1  # its call is older: both are summarised
    return start, sum(tokens for i, tokens in counts.items() if i >= start)


def _summary_input(body: CompactRequest, older: Sequence[Item], max_tokens: int) -> ChatInput:
    turns = (
        *((Turn("system", body.instructions),) if body.instructions else ()),
        *items_mod.to_turns(older),
        Turn("user", SUMMARY_REQUEST),
    )
    return ChatInput(model=body.model, turns=turns, sampling=Sampling(temperature=0.0), max_tokens=max_tokens, params=req.PARAMS)


def _prompt_tokens(chat: ChatPlan) -> int:
    generation = chat.generation
    return len(generation.prompt_tokens) if generation.upstream is None else generation.upstream.prompt_estimate


async def plan(body: CompactRequest, context: ctx.Context, served: ServedModel, admission: Admission, *, max_n: int) -> Compaction:
    """Split the context into kept, summarised and dropped items, and plan the summary's generation."""
    assert served.engine is not None, "compaction is planned only for a model that generates"
    window = served.engine.context_length
    budget = window // 2
    items = context.items
    start, kept_tokens = await to_thread.run_sync(_kept, items, served, budget // 2)
    kept, older = items[start:], items[:start]
    if not older:
        return Compaction(kept, [], 0, None)
    characters = sum(ctx.characters(item) for item in older)
    max_tokens = min(SUMMARY_MAX_TOKENS, budget - kept_tokens, max(MIN_SUMMARY_TOKENS, characters // CHARACTERS_PER_SUMMARY_TOKEN))
    if max_tokens < MIN_SUMMARY_TOKENS:
        return Compaction(kept, [], len(older), None)
    summarised = await to_thread.run_sync(_summarisable, body, older, served, window - max_tokens)
    for _ in range(ctx.PLAN_ATTEMPTS):
        if not summarised:
            break
        try:
            chat = await plan_chat(_summary_input(body, summarised, max_tokens), served, admission, max_n=max_n, operation=ctx.OPERATION)
        except ContextLengthExceeded:
            chat = None
        if chat is not None and _prompt_tokens(chat) + max_tokens <= window:
            return Compaction(kept, summarised, len(older) - len(summarised), chat)
        summarised = ctx.without_oldest(summarised)  # the template's own tokens overflowed it
    return Compaction(kept, [], len(older), None)


def _summarisable(body: CompactRequest, older: list[Item], served: ServedModel, room: int) -> list[Item]:
    """The newest older items that fit in the summary prompt's `room` tokens beside the instructions and
    the request to summarise (blocking: each item is tokenized once); none if nothing fits."""
    while older and ctx.cannot_fit(older, room):
        older = ctx.without_oldest(older)  # by characters: far too long whatever the tokenizer
    try:
        fixed = ctx.instruction_tokens(body.instructions, served) + ctx.count_tokens(served, SUMMARY_REQUEST) + ctx.TEMPLATE_TOKENS_PER_ITEM
    except ContextLengthExceeded:
        return []
    return ctx.newest_that_fit(older, served, room - fixed - ctx.TEMPLATE_TOKENS_PER_ITEM)  # and the generation prompt


def compacted(response_id: str, created_at: int, compaction: Compaction, summary: str | None, usage: dict[str, Any]) -> dict[str, Any]:
    """The spec's CompactResource: the summary as a compaction item (none if it is empty), then the kept items."""
    summary_items = [{"id": new_id(COMPACTION_ID), "type": "compaction", "encrypted_content": summary}] if summary else []
    return CompactedResponse.model_validate(
        {"id": response_id, "created_at": created_at, "output": [*summary_items, *compaction.kept], "usage": usage}
    ).model_dump(mode="json")
