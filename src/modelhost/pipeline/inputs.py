"""What a generation asks for, whatever wire format it came in: the input planning takes.

Chat Completions, legacy Completions and every later format (Responses, batch lines, the console's
playground) convert their request into one of these and call `pipeline.planning`; nothing below
this line knows a wire model. Validation that pydantic does (ranges, lengths) has already happened;
what depends on the model (context, vocabulary, capabilities) is checked by planning.

`Params` names the request fields each part came from, so that planning's errors point at the
field the client sent (``messages`` in a chat request, ``input`` in a response request).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(frozen=True)
class CallRecord:
    """A function call the model made: in an earlier turn (input) or in its answer (output)."""

    id: str
    name: str
    arguments: str  # a JSON text, as OpenAI sends it


@dataclass(frozen=True)
class Turn:
    """One message of the conversation, its content already reduced to text."""

    role: Role
    content: str
    calls: tuple[CallRecord, ...] = ()  # an assistant turn's tool calls
    legacy_call: CallRecord | None = None  # an assistant turn's deprecated `function_call`
    tool_call_id: str | None = None  # a tool turn: the call it answers
    name: str | None = None  # a tool turn answering a deprecated function call: the function's name


@dataclass(frozen=True)
class Function:
    """A function the model may call."""

    name: str
    description: str | None = None
    parameters: Mapping[str, object] | None = None
    strict: bool | None = None


@dataclass(frozen=True)
class Tools:
    """The functions offered and how the model may use them.

    `choice` is none/auto/required, or the name of the one function it must call. `legacy`: asked
    with the deprecated `functions`/`function_call`, answered with `function_call`.
    """

    functions: tuple[Function, ...]
    choice: str | None = None  # None: the default (auto)
    named: bool = False  # `choice` names a function
    parallel: bool = True
    legacy: bool = False


@dataclass(frozen=True)
class OutputFormat:
    """The shape the answer's text must have: free text, any JSON object, or a JSON schema."""

    kind: Literal["text", "json_object", "json_schema"]
    name: str = ""
    schema: Mapping[str, object] | None = None
    strict: bool | None = None


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens, as the request said it (None: the default)."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: Mapping[str, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Params:
    """The request field each part came from, for the `param` of an error."""

    messages: str = "messages"
    tools: str = "tools"
    tool_choice: str = "tool_choice"
    response_format: str = "response_format"
    max_tokens: str = "max_tokens"


@dataclass(frozen=True)
class ChatInput:
    """A conversation to continue."""

    model: str
    turns: tuple[Turn, ...]
    sampling: Sampling = Sampling()
    max_tokens: int | None = None  # None: as many as the context has room for
    n: int = 1
    logprobs: int | None = None  # None: off; k: each token's logprob and its k best alternatives
    tools: Tools | None = None
    output: OutputFormat | None = None
    params: Params = Params()


@dataclass(frozen=True)
class TextInput:
    """Raw prompts to continue (legacy completions): each a string or a list of token ids."""

    model: str
    prompts: tuple[str | tuple[int, ...], ...]
    sampling: Sampling = Sampling()
    max_tokens: int | None = None
    n: int = 1
    best_of: int = 1  # candidates per prompt; the `n` likeliest are returned
    logprobs: int | None = None
    echo: bool = False
    stream: bool = False
