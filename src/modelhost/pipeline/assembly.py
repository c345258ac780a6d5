"""Engine events → what an answer is made of: content text, function calls, and how each choice ended.

A local model writes its calls into its text (`<tool_call>…</tool_call>`, parsed here by
`structured.tools.ToolCallParser`); an upstream server streams them as `ToolCallDelta`s. Both come
out as the same pieces, so every endpoint renders one thing: chat completions as message deltas,
responses as output items. `Assembler` turns each event into pieces as they stream; `collect`
runs a generation to its end and gathers each choice whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

from modelhost.engine.base import ChoiceFinished, EngineEvent, PromptLogprobs, TextDelta, TokenLogprob, ToolCallDelta
from modelhost.pipeline.generation import GenerationRun
from modelhost.pipeline.inputs import CallRecord
from modelhost.structured.tools import ParsedCall, ToolCallParser, ToolPlan


@dataclass(frozen=True)
class ContentPiece:
    """Text of choice `index`'s answer; `logprobs` for the tokens released with it."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class CallPiece:
    """A piece of call `call_index` of choice `index`: the first names it, later ones add to `arguments`.

    A local model's calls arrive whole, in one piece each. `legacy`: the deprecated `function_call`."""

    index: int
    call_index: int
    id: str | None
    name: str | None
    arguments: str
    legacy: bool = False


@dataclass(frozen=True)
class ChoiceEnd:
    """Choice `index` ended: stop, length, or tool_calls/function_call when it made calls."""

    index: int
    reason: str


Piece = Union[ContentPiece, CallPiece, ChoiceEnd]


class Assembler:
    """Turns a generation's events into pieces, holding back text that may start a call."""

    def __init__(self, n: int, tools: ToolPlan | None) -> None:
        self._tools = tools
        self._parsers = [ToolCallParser() for _ in range(n)] if tools is not None else []

    def feed(self, event: EngineEvent) -> list[Piece]:
        if isinstance(event, ToolCallDelta):
            return [CallPiece(event.index, event.call_index, event.id, event.name, event.arguments, event.legacy)]
        if isinstance(event, TextDelta):
            if not self._parsers:
                return [ContentPiece(event.index, event.text, event.logprobs)]
            return self._parsed(event.index, self._parsers[event.index].feed(event.text), event.logprobs)
        if isinstance(event, ChoiceFinished):
            if not self._parsers:
                return [ChoiceEnd(event.index, event.reason)]
            parser = self._parsers[event.index]
            pieces = self._parsed(event.index, parser.finish(drop_unfinished_call=True), ())
            reason = event.reason
            if parser.calls:  # complete calls are the answer even when max_tokens cut a further one short
                reason = "function_call" if self._legacy else "tool_calls"
            return [*pieces, ChoiceEnd(event.index, reason)]
        return []

    @property
    def _legacy(self) -> bool:
        return self._tools is not None and self._tools.legacy

    def _parsed(self, index: int, items: Sequence[str | ParsedCall], logprobs: tuple[TokenLogprob, ...]) -> list[Piece]:
        pieces: list[Piece] = []
        for item in items:
            if isinstance(item, str):
                pieces.append(ContentPiece(index, item, logprobs))
            else:
                call_index = len(self._parsers[index].calls) - 1
                pieces.append(CallPiece(index, call_index, item.id, item.name, item.arguments, self._legacy))
            logprobs = ()  # the text's tokens are reported once, with its first piece
        return pieces


@dataclass
class ChoiceResult:
    """One choice, whole: the raw text and tokens, and the answer assembled from them."""

    text: str = ""  # everything the model wrote, calls included
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "stop"
    _content: list[str] = field(default_factory=list)
    _calls: dict[tuple[bool, int], list[str]] = field(default_factory=dict)  # (legacy, index) → id, name, arguments

    def add(self, piece: Piece) -> None:
        if isinstance(piece, ContentPiece):
            self._content.append(piece.text)
        elif isinstance(piece, CallPiece):
            call = self._calls.setdefault((piece.legacy, piece.call_index), ["", "", ""])
            call[0] = piece.id or call[0]
            call[1] = piece.name or call[1]
            call[2] += piece.arguments
        else:
            self.finish_reason = piece.reason

    @property
    def content(self) -> str | None:
        """The answer's text: None when it is only calls."""
        text = "".join(self._content)
        return (text.strip() or None) if self._calls else text

    @property
    def tool_calls(self) -> list[CallRecord]:
        return [CallRecord(*self._calls[key]) for key in sorted(k for k in self._calls if not k[0])]

    @property
    def function_call(self) -> CallRecord | None:
        """The deprecated single call (asked with `functions`)."""
        legacy = sorted(k for k in self._calls if k[0])
        return CallRecord(*self._calls[legacy[0]]) if legacy else None


@dataclass
class RunResult:
    choices: list[ChoiceResult]
    prompt_logprobs: tuple[TokenLogprob, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


async def collect(run: GenerationRun, tools: ToolPlan | None = None) -> RunResult:
    """Run to the end, gathering each choice's text, tokens, answer and finish reason."""
    assembler = Assembler(run.plan.n, tools)
    choices = [ChoiceResult() for _ in range(run.plan.n)]
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    async for event in run.events():
        if isinstance(event, TextDelta):
            choices[event.index].text += event.text
            choices[event.index].logprobs.extend(event.logprobs)
        elif isinstance(event, PromptLogprobs):
            prompt_logprobs = event.tokens
        for piece in assembler.feed(event):
            choices[piece.index].add(piece)
    return RunResult(choices, prompt_logprobs, run.prompt_tokens, run.completion_tokens, run.cached_tokens)
