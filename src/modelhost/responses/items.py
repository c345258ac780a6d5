"""Items: the request's `input` as stored items, and stored items as the turns planning takes.

A response's context is a list of items, each in the stored shape (`protocol.responses.item_resource`:
an id, a status, content as parts). The request's `input` becomes such items here (a string is one
user message; an item reference is looked up), and any run of items — a `previous_response_id`
chain, a conversation, this request's input — becomes `pipeline.inputs.Turn`s the same way::

    >>> to_turns([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}])
    (Turn(role='user', content='Hi', calls=(), legacy_call=None, tool_call_id=None, name=None),)

Parts and items this text-only server cannot take are a 400 that names them (`input[0].content[1]`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelhost.errors import InvalidRequest, NotFound
from modelhost.ids import new_id
from modelhost.pipeline.inputs import CallRecord, Turn
from modelhost.protocol.responses import (
    CompactionItem,
    Content,
    FunctionCallItem,
    FunctionCallOutputItem,
    ItemReference,
    MessageItem,
    UnsupportedItem,
    UnsupportedPart,
    item_id_prefix,
    item_resource,
)

Item = dict[str, Any]  # an item in its stored shape
# Looks up earlier items by id (the caller's project only): {id: item} for those found.
FindItems = Callable[[Sequence[str]], Mapping[str, Item]]

_TEXT_PARTS = frozenset({"input_text", "output_text", "refusal"})
# How a compaction item's summary reads to the model (a developer turn, rendered as system).
SUMMARY_HEADING = "Summary of the earlier conversation:\n"


def _check_parts(content: Content, param: str) -> None:
    if isinstance(content, str):
        return
    for i, part in enumerate(content):
        if isinstance(part, UnsupportedPart):
            raise InvalidRequest(
                f"Invalid content type at '{param}[{i}]': {part.type} is not supported by this model; send text parts "
                "(input_text, output_text) only.",
                param=f"{param}[{i}]",
                code="invalid_value",
            )


def input_items(
    input: str | Sequence[MessageItem | FunctionCallItem | FunctionCallOutputItem | ItemReference | CompactionItem | UnsupportedItem] | None,
    find: FindItems,
    *,
    param: str = "input",
) -> list[Item]:
    """The request's `input` as stored items, in order: ids given to those sent without one,
    references replaced by the items they name (404 for an id the project does not have)."""
    if input is None:
        return []
    if isinstance(input, str):
        return [item_resource(MessageItem(role="user", content=input), new_id("msg_"))]
    references = [item.id for item in input if isinstance(item, ItemReference)]
    found = find(references) if references else {}
    items: list[Item] = []
    for i, item in enumerate(input):
        if isinstance(item, UnsupportedItem):
            raise InvalidRequest(
                f"Invalid input item at '{param}[{i}]': items of type '{item.type}' are not supported by this server.",
                param=f"{param}[{i}]",
                code="invalid_value",
            )
        if isinstance(item, ItemReference):
            if item.id not in found:
                raise NotFound(f"Item with id '{item.id}' not found.", param=f"{param}[{i}]")
            items.append(dict(found[item.id]))
            continue
        if isinstance(item, (MessageItem, FunctionCallOutputItem)):
            _check_parts(item.content if isinstance(item, MessageItem) else item.output, f"{param}[{i}].{'content' if isinstance(item, MessageItem) else 'output'}")
        items.append(item_resource(item, new_id(item_id_prefix(item))))
    return items


def item_text(content: object) -> str:
    """A stored item's content or output as text: its text parts joined."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content if isinstance(content, list) else []:
        if isinstance(part, Mapping) and part.get("type") in _TEXT_PARTS:
            texts.append(str(part.get("text", part.get("refusal", ""))))
    return "".join(texts)


def to_turns(items: Sequence[Item]) -> tuple[Turn, ...]:
    """Stored items as conversation turns: an assistant message and the function calls after it are
    one assistant turn (its text, then its calls); a call's output is a tool turn answering it; a
    compaction item's summary is a developer turn."""
    turns: list[Turn] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            turns.append(Turn(item["role"], item_text(item.get("content"))))
        elif kind == "function_call":
            call = CallRecord(str(item["call_id"]), str(item["name"]), str(item["arguments"]))
            last = turns[-1] if turns else None
            if last is not None and last.role == "assistant":
                turns[-1] = Turn("assistant", last.content, calls=(*last.calls, call))
            else:
                turns.append(Turn("assistant", "", calls=(call,)))
        elif kind == "function_call_output":
            turns.append(Turn("tool", item_text(item.get("output")), tool_call_id=str(item["call_id"])))
        elif kind == "compaction":
            turns.append(Turn("developer", SUMMARY_HEADING + str(item.get("encrypted_content", ""))))
    return tuple(turns)


def page(items: Sequence[Item], *, limit: int, order: str, after: str | None) -> dict[str, Any]:
    """One page of `items` (oldest first as given) as the spec's list: `order` asc or desc, starting
    after the item `after` (an id not among them: 404, as OpenAI answers)."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise NotFound(f"Item with id '{after}' not found.", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": len(ordered) > limit,
    }
