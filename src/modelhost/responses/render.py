"""The Response object: what the request set, then what the model answered (output items, usage, status).

`frame` is the object as `response.created` shows it (status `in_progress`, no output yet);
`finish` completes it from the answer. Both streamed and whole responses are built by these two,
so the object a stream ends with is the object `GET /v1/responses/{id}` returns.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from modelhost.engine.base import TokenLogprob
from modelhost.ids import new_id
from modelhost.pipeline.assembly import ChoiceResult
from modelhost.pipeline.inputs import CallRecord
from modelhost.protocol.responses import FUNCTION_CALL_ID, MESSAGE_ID, CreateResponse, ResponseObject
from modelhost.responses import request as req

Json = dict[str, Any]


def token_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="backslashreplace")


def logprobs(tokens: Sequence[TokenLogprob]) -> list[Json]:
    """Tokens as the `logprobs` of an `output_text` part or delta."""
    return [
        {
            "token": token_text(t.piece),
            "logprob": t.logprob or 0.0,
            "bytes": list(t.piece),
            "top_logprobs": [{"token": token_text(p), "logprob": lp, "bytes": list(p)} for _, p, lp in t.top],
        }
        for t in tokens
    ]


def frame(body: CreateResponse, response_id: str, model: str, *, created_at: int | None = None) -> Json:
    """The response before any output: the request's settings, status `in_progress`."""
    response = ResponseObject(
        id=response_id,
        created_at=created_at if created_at is not None else int(time.time()),
        status="in_progress",
        background=bool(body.background),
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        max_tool_calls=body.max_tool_calls,
        model=model,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        conversation={"id": conversation} if (conversation := req.conversation_id(body)) is not None else None,
        safety_identifier=body.safety_identifier,
        prompt_cache_key=body.prompt_cache_key,
        store=body.store,
        temperature=1.0 if body.temperature is None else body.temperature,
        text=req.echoed_text(body),
        tool_choice=req.echoed_tool_choice(body),
        tools=req.echoed_tools(body),
        top_logprobs=body.top_logprobs or 0,
        top_p=1.0 if body.top_p is None else body.top_p,
        truncation=body.truncation or "disabled",
        user=body.user,
        metadata=body.metadata or {},
    )
    # The spec's Response has no null `usage` or `user`: left out until there is one.
    return response.model_dump(mode="json", exclude={k for k in ("usage", "user") if getattr(response, k) is None})


def message_item(item_id: str, text: str, status: str, tokens: Sequence[TokenLogprob] = (), *, with_logprobs: bool = False) -> Json:
    part: Json = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs(tokens) if with_logprobs else []}
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def call_item(item_id: str, call: CallRecord, status: str = "completed") -> Json:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


def output_items(choice: ChoiceResult, *, with_logprobs: bool) -> list[Json]:
    """An answer as output items: its message (unless it is only calls), then one item per call."""
    items: list[Json] = []
    status = "incomplete" if choice.finish_reason == "length" else "completed"
    if choice.content is not None:
        items.append(message_item(new_id(MESSAGE_ID), choice.content, status, choice.logprobs, with_logprobs=with_logprobs))
    items.extend(call_item(new_id(FUNCTION_CALL_ID), call) for call in choice.tool_calls)
    return items


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Json:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish(response: Json, output: list[Json], finish_reason: str, usage_: Json) -> Json:
    """`response` completed (or incomplete, when the answer ran out of tokens) with its output and usage."""
    incomplete = finish_reason == "length"
    return {
        **response,
        "status": "incomplete" if incomplete else "completed",
        "completed_at": None if incomplete else int(time.time()),
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": output,
        "usage": usage_,
    }


def failed(response: Json, code: str, message: str, output: list[Json]) -> Json:
    return {**response, "status": "failed", "error": {"code": code, "message": message}, "output": output}
