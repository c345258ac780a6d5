"""A streamed response: the assembled pieces of one answer as the Responses API's events, in the spec's order.

    response.created → response.in_progress
    per message:  output_item.added → content_part.added → output_text.delta… → output_text.done
                  → content_part.done → output_item.done
    per call:     output_item.added → function_call_arguments.delta → function_call_arguments.done
                  → output_item.done
    response.completed | response.incomplete | response.failed (after an `error` event)

Every event carries a `sequence_number` one above the last. Whitespace before a call is held back
(chat completions' whole answer drops it too), so an answer that is only calls has no empty message.
`ResponseEvents` only renders; the route decides when the response is stored and the last event sent.
"""

from __future__ import annotations

import json
from typing import Any

from modelhost.engine.base import TokenLogprob
from modelhost.ids import new_id
from modelhost.pipeline.assembly import CallPiece, ChoiceEnd, ContentPiece, Piece
from modelhost.pipeline.inputs import CallRecord
from modelhost.protocol.responses import FUNCTION_CALL_ID, MESSAGE_ID
from modelhost.responses import render

Json = dict[str, Any]
Event = tuple[str, Json]  # (type, payload with type and sequence_number)


def sse(event: Event) -> bytes:
    """One event on the wire: its `event:` line names the type, as the spec's examples do."""
    kind, payload = event
    return f"event: {kind}\ndata: ".encode() + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class ResponseEvents:
    """Renders one response's stream; `output` holds its finished output items, in order."""

    def __init__(self, response: Json, *, with_logprobs: bool) -> None:
        self.response = response
        self.output: list[Json] = []
        self.finish_reason = "stop"
        self._with_logprobs = with_logprobs
        self._sequence = -1
        self._message: Json | None = None  # the open message item
        self._text: list[str] = []
        self._tokens: list[TokenLogprob] = []
        self._held = ""  # whitespace not yet shown: dropped if a call comes next
        self._call: list[Any] | None = None  # [item id, output index, call id, name, arguments] of the open call
        self._call_index = -1  # the assembler's index of the open call

    def event(self, kind: str, **fields: Any) -> Event:
        self._sequence += 1
        return kind, {"type": kind, **fields, "sequence_number": self._sequence}

    def start(self) -> list[Event]:
        return [self.event("response.created", response=self.response), self.event("response.in_progress", response=self.response)]

    def feed(self, piece: Piece) -> list[Event]:
        if isinstance(piece, ContentPiece):
            return self._content(piece)
        if isinstance(piece, CallPiece):
            return self._call_piece(piece)
        if isinstance(piece, ChoiceEnd):
            self.finish_reason = "length" if piece.reason == "length" else "stop"
            events = self._close_call()
            if self._message is None and not self.output:  # an empty (or blank) answer is still a message
                events += self._open_message()
                if self._held:
                    self._text.append(self._held)
                    events.append(self._text_event("response.output_text.delta", delta=self._held, logprobs=[]))
            return events + self._close_message()
        return []

    def _content(self, piece: ContentPiece) -> list[Event]:
        events = self._close_call()
        self._tokens.extend(piece.logprobs)
        if self._message is None and not (self._held + piece.text).strip():
            self._held += piece.text
            return events
        if self._message is None:
            events += self._open_message()
        text, self._held = self._held + piece.text, ""
        self._text.append(text)
        tokens = render.logprobs(piece.logprobs) if self._with_logprobs else []
        events.append(self._text_event("response.output_text.delta", delta=text, logprobs=tokens))
        return events

    def _open_message(self) -> list[Event]:
        self._message = {"id": new_id(MESSAGE_ID), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        index = len(self.output)
        return [
            self.event("response.output_item.added", output_index=index, item=self._message),
            self.event(
                "response.content_part.added",
                item_id=self._message["id"],
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def _text_event(self, kind: str, **fields: Any) -> Event:
        assert self._message is not None
        return self.event(kind, item_id=self._message["id"], output_index=len(self.output), content_index=0, **fields)

    def _close_message(self) -> list[Event]:
        if self._message is None:
            return []
        status = "incomplete" if self.finish_reason == "length" else "completed"
        item = render.message_item(self._message["id"], "".join(self._text), status, self._tokens, with_logprobs=self._with_logprobs)
        part = item["content"][0]
        events = [
            self._text_event("response.output_text.done", text=part["text"], logprobs=part["logprobs"]),
            self._text_event("response.content_part.done", part=part),
            self.event("response.output_item.done", output_index=len(self.output), item=item),
        ]
        self.output.append(item)
        self._message, self._text, self._tokens = None, [], []
        return events

    def _call_piece(self, piece: CallPiece) -> list[Event]:
        events: list[Event] = []
        if self._call is not None and piece.call_index != self._call_index:  # a new call begins
            events += self._close_call()
        if self._call is None:
            self._call_index = piece.call_index
            self._held = ""
            events += self._close_message()
            item_id, index = new_id(FUNCTION_CALL_ID), len(self.output)
            self._call = [item_id, index, piece.id or "", piece.name or "", ""]
            opened = render.call_item(item_id, CallRecord(piece.id or "", piece.name or "", ""), "in_progress")
            events.append(self.event("response.output_item.added", output_index=index, item=opened))
        if piece.arguments:
            self._call[4] += piece.arguments
            events.append(
                self.event("response.function_call_arguments.delta", item_id=self._call[0], output_index=self._call[1], delta=piece.arguments)
            )
        return events

    def _close_call(self) -> list[Event]:
        if self._call is None:
            return []
        item_id, index, call_id, name, arguments = self._call
        item = render.call_item(item_id, CallRecord(call_id, name, arguments))
        self._call = None
        self.output.append(item)
        return [
            self.event("response.function_call_arguments.done", item_id=item_id, output_index=index, name=name, arguments=arguments),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def finished(self, response: Json) -> Event:
        """The last event: `response.completed`, or `response.incomplete` when the answer ran out of tokens."""
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return self.event(kind, response=response)

    def failed(self, code: str | None, message: str, param: str | None, response: Json) -> list[Event]:
        return [
            self.event("error", code=code, message=message, param=param),
            self.event("response.failed", response=response),
        ]
