"""The engine interface: submit a generation, get an async stream of events.

Every backend (the embedded llama.cpp engine, vLLM in-process, an OpenAI-compatible upstream)
implements `Engine`; nothing above this package can tell them apart. Engines that own a tokenizer
take token prompts; an engine that forwards to another OpenAI-compatible server
(``forwards_requests``) takes the validated request itself (`UpstreamInput`) and reports the
upstream's own token counts with `UsageReported`.

Every engine's `Generation` is a `generation_task.GenerationTask` (the event queue, `cancel()`
and the token counts); what an engine raises is an `EngineError`, which the pipeline translates
into what the client is told (`pipeline/engine_errors.py`), never the engine itself.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Union


class Priority(enum.IntEnum):
    """Whose work goes first: interactive requests always before batch lines (a lower value first).

    An engine gives batch work only the capacity interactive requests leave: it never starts a
    batch sequence while an interactive request waits, and the llama.cpp engine takes a running
    batch sequence's slot back (preempts it) at the next step when an interactive request needs it.
    """

    INTERACTIVE = 0
    BATCH = 1


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token, exactly as the request asked."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; k: report each token's logprob and its k best alternatives
    prompt_logprobs: bool = False  # also report the logprob of every prompt token (legacy `echo`)
    grammar: str | None = None  # GBNF the output must match (structured outputs, tool calls)
    grammar_trigger: str | None = None  # if set, the grammar applies only from this text on (lazy)


@dataclass(frozen=True)
class UpstreamInput:
    """A request as an OpenAI-compatible upstream takes it (for engines that `forwards_requests`).

    `body` holds only the validated request's declared fields, re-serialized (the messages or the
    one prompt, sampling fields, tools, response_format, ...): never unknown fields, never `model`,
    `stream`, `stream_options` or `n`, which the engine sets. `prompt_estimate` sizes the limit
    reservation until the upstream reports the real count.
    """

    endpoint: str  # "chat/completions" or "completions"
    body: Mapping[str, object]
    prompt_estimate: int


@dataclass(frozen=True)
class GenerationRequest:
    """`n` continuations of one tokenized prompt.

    `cache_scope` names who may reuse this prompt's KV cache afterwards (the organization), so a
    prefix computed for one tenant is never served to another. `upstream` is set (and
    `prompt_tokens` empty) for an engine that forwards requests instead of tokenizing them.
    `part` is this prompt's index in a legacy completion with several prompts: the later parts
    belong to a request the engine already took, so they never meet its queue limit alone (one
    HTTP request is admitted or refused whole, not refused by its own first half).
    `cache_scope` (the organization) and `project` also say whose share of an engine's queue the
    request takes (`fair_share`). `priority`: interactive, or a batch line that only uses the
    capacity interactive requests leave (`Priority`).
    """

    request_id: str
    prompt_tokens: Sequence[int]
    sampling: SamplingParams
    n: int = 1
    cache_scope: str = ""
    upstream: UpstreamInput | None = None
    part: int = 0
    project: str = ""
    priority: Priority = Priority.INTERACTIVE


@dataclass(frozen=True)
class TokenLogprob:
    """One token as the model saw it: its bytes, log probability and best alternatives."""

    token_id: int
    piece: bytes
    logprob: float | None  # None for the first prompt token (nothing predicts it)
    top: tuple[tuple[int, bytes, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """New text for choice `index` (never a partial stop string, never a broken UTF-8 sequence).

    `logprobs` holds the tokens released with this text when the request asked for them.
    """

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class PromptLogprobs:
    """The logprob of every prompt token (sent once, first, when `prompt_logprobs` was asked)."""

    tokens: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class ChoiceFinished:
    """Choice `index` ended: `stop` (end of turn or stop string) or `length` (max tokens)."""

    index: int
    reason: str
    completion_tokens: int


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of tool call `call_index` of choice `index`, as an upstream streamed it.

    The first piece of a call carries its `id` and `name`; later pieces append to `arguments`.
    `legacy` marks the deprecated single `function_call` form.
    """

    index: int
    call_index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    legacy: bool = False


@dataclass(frozen=True)
class UsageReported:
    """The token counts the model's server measured; the pipeline records these over its own."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


EngineEvent = Union[TextDelta, ChoiceFinished, PromptLogprobs, ToolCallDelta, UsageReported]


class EngineError(Exception):
    """Something an engine reports about one request, in the engine's own terms.

    Engines never build client-facing errors: `modelhost.pipeline.engine_errors.client_error` says
    what the client is told (status, message, `param`, `code`, Retry-After) for each kind.
    """


class EngineOverloaded(EngineError):
    """The engine cannot take the request now (its queue, or the tenant's share of it, is full)."""


class EngineFailed(EngineError):
    """The engine could not run or finish the request; its message is for the logs only.

    Iterating a `Generation` raises only this (or one of its kinds, such as an upstream's
    `UpstreamRejected`); submitting one raises `EngineOverloaded`.
    """


class Generation(Protocol):
    """A submitted request. Iterate it for events; `cancel()` stops it and frees its resources."""

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far over all choices (exact once the stream has ended)."""
        ...

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens served from a cache instead of being computed."""
        ...

    def cancel(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[EngineEvent]: ...


class Engine(Protocol):
    """A loaded model that turns token prompts into streamed text.

    An engine with ``forwards_requests`` (another OpenAI-compatible server) is given
    `GenerationRequest.upstream` instead of tokens; its tokenizer methods are never called.
    """

    # Read-only to callers: an engine may hold these as plain attributes or compute them.
    @property
    def model_id(self) -> str: ...

    @property
    def context_length(self) -> int:
        """Tokens one sequence may hold: prompt + completion."""
        ...

    @property
    def max_n(self) -> int:
        """The most choices one request may ask for."""
        ...

    @property
    def forwards_requests(self) -> bool:
        """Whether requests go to another OpenAI-compatible server (`GenerationRequest.upstream`)."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    @property
    def start_token(self) -> int:
        """The token an empty prompt becomes."""
        ...

    def render_chat(
        self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None
    ) -> str: ...

    def tokenize_chat(
        self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None
    ) -> list[int]:
        """The conversation rendered by the model's template and tokenized so that only the
        template's own text makes control tokens: client text is always text (`chat_prompt`).
        Raises `ChatTemplateError` when the template rejects the messages."""
        ...

    @property
    def template_supports_tools(self) -> bool:
        """Whether the model's own chat template renders `tools` (else a documented fallback is used)."""
        ...

    def check_grammar(self, grammar: str) -> None:
        """Raise `GrammarError` if the engine cannot enforce `grammar`."""
        ...

    @property
    def vocab_size(self) -> int: ...

    def submit(self, request: GenerationRequest) -> Generation:
        """Queue `request`; raises `EngineOverloaded` when the engine cannot take more."""
        ...

    def state(self) -> dict[str, object]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
