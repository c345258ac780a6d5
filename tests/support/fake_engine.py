"""`ScriptedEngine`: an engine that writes what its script says, for pipeline tests without a model.

Like simonw/llm's test model: each request's choices write the scripted texts, piece by piece,
then finish with the scripted reason. A byte is a token (vocabulary 256, so tokenizing needs no
model); the chat "template" is one line per message. `gate`, when set, holds every generation
before its first event until the test opens it, so a test can cancel or disconnect at a chosen
point without sleeping; `fail` makes the generation raise `EngineFailed` after its first piece.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from modelhost.engine.base import ChoiceFinished, EngineEvent, EngineFailed, EngineOverloaded, GenerationRequest, TextDelta


@dataclass
class ScriptedGeneration:
    pieces: Sequence[str]
    n: int
    reason: str
    gate: asyncio.Event | None
    fail: bool
    completion_tokens: int = 0
    cached_tokens: int = 0
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        if self.gate is not None:
            await self.gate.wait()
        for index in range(self.n):
            for i, piece in enumerate(self.pieces):
                if self.cancelled:
                    return
                self.completion_tokens += len(piece.encode())
                yield TextDelta(index, piece)
                if self.fail and i == 0:
                    raise EngineFailed("scripted failure")
            yield ChoiceFinished(index, self.reason, self.completion_tokens)


@dataclass
class ScriptedEngine:
    pieces: Sequence[str] = ("Hello", ", ", "world")
    reason: str = "stop"
    context_length: int = 64
    max_n: int = 4
    model_id: str = "scripted"
    forwards_requests: bool = False
    template_supports_tools: bool = False
    vocab_size: int = 256
    start_token: int = 0
    gate: asyncio.Event | None = None
    fail: bool = False
    overloaded: bool = False
    submitted: list[GenerationRequest] = field(default_factory=list)
    generations: list[ScriptedGeneration] = field(default_factory=list)
    rendered: list[Sequence[dict[str, object]]] = field(default_factory=list)

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(tokens).decode(errors="replace")

    def render_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> str:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def tokenize_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> list[int]:
        self.rendered.append(messages)
        return self.tokenize(self.render_chat(messages, tools))

    def check_grammar(self, grammar: str) -> None:
        pass

    def submit(self, request: GenerationRequest) -> ScriptedGeneration:
        if self.overloaded:
            raise EngineOverloaded()
        self.submitted.append(request)
        generation = ScriptedGeneration(self.pieces, request.n, self.reason, self.gate, self.fail)
        self.generations.append(generation)
        return generation

    def state(self) -> dict[str, object]:
        return {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
