"""`/v1/responses`: the request, its input items and the Response object, as OpenAI defines them.

The item models (messages with `input_text`/`output_text` parts, `function_call`,
`function_call_output`, item references, the `compaction` summary) are shared with the Conversations API, which stores
the same items. Types this server cannot take (image, audio and file parts; built-in tools and
their call items) are parsed, not refused by pydantic, so that the converter can answer a 400
that names them (`input[0].content[1]`, `tools[2]`).

    >>> CreateResponse.model_validate({"model": "m", "input": "Hi"}).store
    True
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, Discriminator, Field, Tag

from modelhost.protocol.common import StoredStr, WireModel

MAX_INPUT_ITEMS = 2048  # as chat's MAX_MESSAGES
MAX_CONTENT_PARTS = 1024
MAX_TOOLS = 128
MAX_INCLUDE = 16
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_ID_LENGTH = 128
MAX_COMPACTION_CHARACTERS = 1 << 20  # a summary is at most a few hundred tokens; the spec allows 20 MiB
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"

# What `include` may ask for (the spec's IncludeEnum); only the logprobs change anything here.
Includable = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


def _by_type(tags: frozenset[str], other: str = "other") -> Discriminator:
    """A discriminator on `type` that sends every type not in `tags` to the `other` model."""

    def tag(value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return kind if isinstance(kind, str) and kind in tags else other

    return Discriminator(tag)


# -- content parts -----------------------------------------------------------------------------


class InputTextPart(WireModel):
    type: Literal["input_text"]
    text: str


class OutputTextPart(WireModel):
    """An assistant's text, sent back as input (or stored); annotations and logprobs are kept as sent."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] | None = None


class RefusalPart(WireModel):
    type: Literal["refusal"]
    refusal: str


class UnsupportedPart(WireModel):
    """An image, audio or file part (or any other): parsed so the 400 can name it."""

    type: str


ContentPart = Annotated[
    Union[
        Annotated[InputTextPart, Tag("input_text")],
        Annotated[OutputTextPart, Tag("output_text")],
        Annotated[RefusalPart, Tag("refusal")],
        Annotated[UnsupportedPart, Tag("other")],
    ],
    _by_type(frozenset({"input_text", "output_text", "refusal"})),
]
Content = Union[str, Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]]


# -- items -------------------------------------------------------------------------------------


class MessageItem(WireModel):
    """A message: `type` may be left out (the spec's EasyInputMessage)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Content
    id: StoredStr | None = Field(default=None, max_length=MAX_ID_LENGTH)
    status: ItemStatus | None = None


class FunctionCallItem(WireModel):
    """A call the model made, sent back so the conversation can go on."""

    type: Literal["function_call"]
    call_id: StoredStr = Field(min_length=1, max_length=MAX_ID_LENGTH)
    name: str = Field(min_length=1, max_length=128)
    arguments: str
    id: StoredStr | None = Field(default=None, max_length=MAX_ID_LENGTH)
    status: ItemStatus | None = None


class FunctionCallOutputItem(WireModel):
    """The result of a function call, answering its `call_id`."""

    type: Literal["function_call_output"]
    call_id: StoredStr = Field(min_length=1, max_length=MAX_ID_LENGTH)
    output: Content
    id: StoredStr | None = Field(default=None, max_length=MAX_ID_LENGTH)
    status: ItemStatus | None = None


class ItemReference(WireModel):
    """An earlier item by id (`type` may be left out or null)."""

    type: Literal["item_reference"] | None = "item_reference"
    id: StoredStr = Field(min_length=1, max_length=MAX_ID_LENGTH)


class CompactionItem(WireModel):
    """The summary `POST /v1/responses/compact` wrote of the turns it replaced, sent back as input.

    Not encrypted here: `encrypted_content` is the summary's plain text (docs/responses.md)."""

    type: Literal["compaction"]
    encrypted_content: StoredStr = Field(max_length=MAX_COMPACTION_CHARACTERS)
    id: StoredStr | None = Field(default=None, max_length=MAX_ID_LENGTH)


class UnsupportedItem(WireModel):
    """Any other item (reasoning, built-in tool calls, …): parsed so the 400 can name it."""

    type: str


_ITEM_TAGS = frozenset({"message", "function_call", "function_call_output", "item_reference", "compaction"})


def _item_tag(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is None:
            return "message" if "role" in value else "item_reference"
    else:
        kind = getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in _ITEM_TAGS else "other"


InputItem = Annotated[
    Union[
        Annotated[MessageItem, Tag("message")],
        Annotated[FunctionCallItem, Tag("function_call")],
        Annotated[FunctionCallOutputItem, Tag("function_call_output")],
        Annotated[ItemReference, Tag("item_reference")],
        Annotated[CompactionItem, Tag("compaction")],
        Annotated[UnsupportedItem, Tag("other")],
    ],
    Discriminator(_item_tag),
]
InputItems = Annotated[list[InputItem], Field(max_length=MAX_INPUT_ITEMS)]


# -- tools and formats -------------------------------------------------------------------------


class FunctionTool(WireModel):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None


class BuiltinTool(WireModel):
    """web_search, file_search, code_interpreter, …: parsed so the 400 can name the tool."""

    type: str


Tool = Annotated[
    Union[Annotated[FunctionTool, Tag("function")], Annotated[BuiltinTool, Tag("other")]],
    _by_type(frozenset({"function"})),
]


class ToolChoiceFunction(WireModel):
    type: Literal["function"]
    name: str


class ToolChoiceOther(WireModel):
    """allowed_tools, a built-in tool, mcp, custom: parsed so the 400 can name it."""

    type: str


ToolChoice = Union[
    Literal["none", "auto", "required"],
    Annotated[
        Union[Annotated[ToolChoiceFunction, Tag("function")], Annotated[ToolChoiceOther, Tag("other")]],
        _by_type(frozenset({"function"})),
    ],
]


class FormatText(WireModel):
    type: Literal["text"]


class FormatJsonObject(WireModel):
    type: Literal["json_object"]


class FormatJsonSchema(WireModel):
    type: Literal["json_schema"]
    name: str = Field(pattern=FUNCTION_NAME)
    schema_: dict[str, object] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[Union[FormatText, FormatJsonObject, FormatJsonSchema], Field(discriminator="type")]


class TextConfig(WireModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(WireModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ConversationRef(WireModel):
    id: StoredStr = Field(min_length=1, max_length=MAX_ID_LENGTH)


def check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` within OpenAI's bounds (16 pairs, keys ≤ 64, values ≤ 512 characters)."""
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(f"metadata keys must be at most {MAX_METADATA_KEY} characters")
        if len(value) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata values must be at most {MAX_METADATA_VALUE} characters")
    return metadata


Metadata = Annotated[dict[StoredStr, StoredStr], Field(max_length=MAX_METADATA_PAIRS), AfterValidator(check_metadata)]


class CreateResponse(WireModel):
    """The body of `POST /v1/responses` (and of `/v1/responses/input_tokens`, which ignores what it cannot count)."""

    model: str
    input: str | InputItems | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[Includable] | None = Field(default=None, max_length=MAX_INCLUDE)
    metadata: Metadata | None = None
    user: StoredStr | None = Field(default=None, max_length=256)
    safety_identifier: StoredStr | None = Field(default=None, max_length=64)
    prompt_cache_key: StoredStr | None = Field(default=None, max_length=256)
    store: Annotated[bool, BeforeValidator(lambda value: True if value is None else value)] = True  # null: the default
    stream: bool | None = None
    background: bool | None = None
    previous_response_id: StoredStr | None = Field(default=None, max_length=MAX_ID_LENGTH)
    conversation: StoredStr | ConversationRef | None = None
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    text: TextConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: ReasoningConfig | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None


class CompactRequest(WireModel):
    """The body of `POST /v1/responses/compact`: the context to compact, as a create would read it."""

    model: str
    input: str | InputItems | None = None
    previous_response_id: StoredStr | None = Field(default=None, max_length=MAX_ID_LENGTH)
    instructions: str | None = None
    prompt_cache_key: StoredStr | None = Field(default=None, max_length=64)
    service_tier: Literal["auto", "default", "fast", "flex", "scale", "priority"] | None = None


# -- the Response object -----------------------------------------------------------------------


class InputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[TokenLogprob] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class FunctionCallOut(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = Union[OutputMessage, FunctionCallOut]


class ErrorObject(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(BaseModel):
    """The Response, as `POST /v1/responses` returns it and `GET /v1/responses/{id}` reads it back."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
    completed_at: int | None = None
    background: bool = False
    error: ErrorObject | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    conversation: ConversationRef | None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str = "default"
    store: bool = True
    temperature: float = 1.0
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}, "verbosity": "medium"})
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_logprobs: int = 0
    top_p: float = 1.0
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class CompactedResponse(BaseModel):
    """What `POST /v1/responses/compact` returns (the spec's CompactResource): items to send as the next `input`."""

    id: str
    object: Literal["response.compaction"] = "response.compaction"
    created_at: int
    output: list[dict[str, Any]]
    usage: ResponseUsage


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


class InputTokens(BaseModel):
    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


class ItemList(BaseModel):
    """A page of items (`/v1/responses/{id}/input_items`, a conversation's items)."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


# -- items as stored and listed ----------------------------------------------------------------

# The id prefixes of the items the server names.
MESSAGE_ID, FUNCTION_CALL_ID, FUNCTION_CALL_OUTPUT_ID, COMPACTION_ID = "msg_", "fc_", "fco_", "cmp_"


def _parts(content: Content, role: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if role == "assistant":
            return [{"type": "output_text", "text": content, "annotations": []}]
        return [{"type": "input_text", "text": content}]
    return [part.model_dump(mode="json", by_alias=True) for part in content]


StoredItem = Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, CompactionItem]


def item_resource(item: StoredItem, item_id: str) -> dict[str, Any]:
    """An input item as it is stored and listed (the spec's ItemResource): an id, a status, content as parts.

    >>> item_resource(MessageItem(role="user", content="Hi"), "msg_1")
    {'id': 'msg_1', 'type': 'message', 'role': 'user', 'status': 'completed', 'content': [{'type': 'input_text', 'text': 'Hi'}]}
    """
    if isinstance(item, MessageItem):
        return {
            "id": item.id or item_id,
            "type": "message",
            "role": item.role,
            "status": item.status or "completed",
            "content": _parts(item.content, item.role),
        }
    if isinstance(item, CompactionItem):
        return {"id": item.id or item_id, "type": "compaction", "encrypted_content": item.encrypted_content}
    if isinstance(item, FunctionCallItem):
        return {
            "id": item.id or item_id,
            "type": "function_call",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
            "status": item.status or "completed",
        }
    output: Any = item.output if isinstance(item.output, str) else _parts(item.output, "user")
    return {
        "id": item.id or item_id,
        "type": "function_call_output",
        "call_id": item.call_id,
        "output": output,
        "status": item.status or "completed",
    }


def item_id_prefix(item: StoredItem) -> str:
    """The prefix of the id the server gives `item` when the client sent none."""
    if isinstance(item, CompactionItem):
        return COMPACTION_ID
    if isinstance(item, FunctionCallItem):
        return FUNCTION_CALL_ID
    if isinstance(item, FunctionCallOutputItem):
        return FUNCTION_CALL_OUTPUT_ID
    return MESSAGE_ID
