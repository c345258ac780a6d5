"""Stored chat completions (`store: true`): the list, message list, update and deletion shapes, as OpenAI defines them.

A stored completion is the chat completion object the client was answered with, plus its
`metadata`. The routes render these models with `exclude_unset`, so a stored object comes back
with exactly the fields it was answered with (no `tool_calls: null` the spec does not allow).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modelhost.protocol.chat import ChatCompletion, FunctionCall, TextPart, ToolCallOut
from modelhost.protocol.common import StoredStr, WireModel
from modelhost.protocol.responses import MAX_ID_LENGTH, Metadata

ListOrder = Literal["asc", "desc"]


class StoredChatCompletion(ChatCompletion):
    metadata: dict[str, str] = Field(default_factory=dict)


class ChatCompletionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredChatCompletion]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ChatCompletionDeleted(BaseModel):
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    id: str
    deleted: bool


class StoredMessage(BaseModel):
    """A request message as stored: its text as `content`, its text parts as `content_parts` when it had parts.

    The spec types these as response messages (`role: assistant`); OpenAI answers each with the
    role it was sent with, and so does this server.
    """

    model_config = ConfigDict(extra="allow")  # a tool message's tool_call_id

    id: str
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | None
    name: str | None = None
    content_parts: list[TextPart] | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    function_call: FunctionCall | None = None


class ChatCompletionMessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredMessage]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ChatCompletionUpdateRequest(WireModel):
    metadata: Metadata | None


class MessageListQuery(BaseModel):
    """`GET /v1/chat/completions/{id}/messages`'s query; unknown parameters are ignored."""

    after: StoredStr | None = Field(default=None, max_length=MAX_ID_LENGTH + 8)
    limit: int = Field(default=20, ge=1, le=100)
    order: ListOrder = "asc"


class ChatCompletionListQuery(MessageListQuery):
    """`GET /v1/chat/completions`'s query; `metadata[key]=value` filters are parsed beside it."""

    model: StoredStr | None = Field(default=None, max_length=256)
