"""`EngineWrapper`: an engine that is its inner engine in every respect but what a subclass changes.

The wrappers (`FairShareEngine`, the catalog's `DrainableEngine`) override `submit` and a little
more; every other `Engine` member is forwarded here by name, so a wrapper is an `Engine` to the
type checker too, and nothing above the engines can tell it from the engine it wraps.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelhost.engine.base import Engine, Generation, GenerationRequest


class EngineWrapper:
    """Forwards every `Engine` member to `inner`; subclasses override what they change.

    Any other attribute (an engine's own, such as vLLM's ``capacity``) is the inner engine's too.
    """

    def __init__(self, inner: Engine) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def context_length(self) -> int:
        return self.inner.context_length

    @property
    def max_n(self) -> int:
        return self.inner.max_n

    @property
    def forwards_requests(self) -> bool:
        return self.inner.forwards_requests

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.inner.detokenize(tokens)

    @property
    def start_token(self) -> int:
        return self.inner.start_token

    def render_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> str:
        return self.inner.render_chat(messages, tools)

    def tokenize_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> list[int]:
        return self.inner.tokenize_chat(messages, tools)

    @property
    def template_supports_tools(self) -> bool:
        return self.inner.template_supports_tools

    def check_grammar(self, grammar: str) -> None:
        self.inner.check_grammar(grammar)

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    def submit(self, request: GenerationRequest) -> Generation:
        return self.inner.submit(request)

    def state(self) -> dict[str, object]:
        return self.inner.state()

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()
