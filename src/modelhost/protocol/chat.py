"""`POST /v1/chat/completions`: the request and response shapes, as OpenAI defines them."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from modelhost.protocol.common import Usage, WireModel
from modelhost.protocol.responses import Metadata

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Seeds are int64 on the wire, and the schema says so. Validation allows 1024 past either end:
# clients and fuzzers that compare JSON numbers as doubles cannot tell 2**63 - 1 from 2**63 + 512,
# and a seed is only entropy (the sampler folds it into 64 bits). A 70-bit seed is still a 400.
SEED_SLACK = 1024
Seed = Annotated[
    int,
    Field(
        ge=INT64_MIN - SEED_SLACK,
        le=INT64_MAX + SEED_SLACK,
        json_schema_extra={"minimum": INT64_MIN, "maximum": INT64_MAX, "format": "int64"},
    ),
]
MAX_STOP_SEQUENCES = 4
MAX_LOGIT_BIAS_ENTRIES = 1024
# What the logit_bias validators enforce, stated in the OpenAPI document as well.
LOGIT_BIAS_SCHEMA: dict[str, object] = {
    "propertyNames": {"pattern": "^[0-9]{1,9}$"},
    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
    "maxProperties": MAX_LOGIT_BIAS_ENTRIES,
}
MAX_MESSAGES = 2048


def _at_most_four_stops(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    return value


def _valid_logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    if value is not None and len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} entries are allowed")
    for token, bias in (value or {}).items():
        if not (token.isascii() and token.isdigit()) or len(token) > 9:  # '²' is a digit to isdigit
            raise ValueError(f"keys must be token ids (integers), got {token[:20]!r}")
        if not -100 <= bias <= 100:
            raise ValueError(f"bias values must be between -100 and 100, got {bias}")
    return value


# `stop` and `logit_bias` as chat and legacy completions both take them.
Stop = Annotated[Union[str, list[str], None], AfterValidator(_at_most_four_stops)]
LogitBias = Annotated[
    Union[dict[str, float], None], AfterValidator(_valid_logit_bias), Field(json_schema_extra=LOGIT_BIAS_SCHEMA)
]


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class OtherPart(WireModel):
    """Image, audio, file or refusal parts: parsed so the error can say this model cannot take them."""

    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[Union[TextPart, OtherPart], Field(discriminator="type")]
Content = Union[str, list[ContentPart]]


class FunctionCall(WireModel):
    name: str
    arguments: str


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(WireModel):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(WireModel):
    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(WireModel):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(WireModel):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None


class ToolMessage(WireModel):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


class FunctionMessage(WireModel):
    role: Literal["function"]
    content: str | None
    name: str


Message = Annotated[
    Union[SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage, FunctionMessage],
    Field(discriminator="role"),
]


class FunctionDefinition(WireModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None


class Tool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(WireModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, object] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(WireModel):
    type: Literal["text"]


class ResponseFormatJsonObject(WireModel):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(WireModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    Union[ResponseFormatText, ResponseFormatJsonObject, ResponseFormatJsonSchema], Field(discriminator="type")
]

MAX_TOOLS = 128


class StreamOptions(WireModel):
    include_usage: bool | None = None


class ChatCompletionRequest(WireModel):
    model: str
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: Stop = None
    seed: Seed | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: LogitBias = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    # Stored chat completions: kept for `GET /v1/chat/completions…` until the retention runs out.
    store: bool | None = None
    metadata: Metadata | None = None


# -- responses ---------------------------------------------------------------------------------


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    function_call: FunctionCall | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class Choice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class ChatUsage(Usage):
    prompt_tokens_details: PromptTokensDetails | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: ChatUsage


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall | None = None


class Delta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCall | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: ChatUsage | None = None
