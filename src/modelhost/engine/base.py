"""The engine interface: submit a generation, get an async stream of events.

Every backend (the embedded llama.cpp engine, a fake for tests, later upstream servers) implements
`Engine`; nothing above this package can tell them apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Union


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


@dataclass(frozen=True)
class GenerationRequest:
    """`n` continuations of one tokenized prompt.

    `cache_scope` names who may reuse this prompt's KV cache afterwards (the organization), so a
    prefix computed for one tenant is never served to another.
    """

    request_id: str
    prompt_tokens: Sequence[int]
    sampling: SamplingParams
    n: int = 1
    cache_scope: str = ""


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


EngineEvent = Union[TextDelta, ChoiceFinished, PromptLogprobs]


class EngineOverloaded(Exception):
    """The engine's wait queue is full; the caller should answer 503 with Retry-After."""


class EngineFailed(Exception):
    """The engine could not run the request (a decode error); nothing about it is client-visible."""


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
    """A loaded model that turns token prompts into streamed text."""

    model_id: str
    context_length: int  # tokens one sequence may hold: prompt + completion
    max_n: int  # most choices one request may ask for

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    @property
    def start_token(self) -> int:
        """The token an empty prompt becomes."""
        ...

    def render_chat(self, messages: Sequence[dict[str, object]]) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    def submit(self, request: GenerationRequest) -> Generation:
        """Queue `request`; raises `EngineOverloaded` when the engine cannot take more."""
        ...

    def state(self) -> dict[str, object]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
