"""The input tokens a batch enqueues: what OpenAI's batch queue limit (`batch_1_day_max_input_tokens`) counts.

Counted once, when the batch is validated, with the model's own tokenizer over each line's input
text (chat messages' text, a prompt or an embedding input, a response's instructions and input
items' text; token arrays count their length). Template and framing tokens are left out: it is the
size of the work waiting, not a bill. Lines are tokenized a page at a time on a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio

from modelhost.engine.registry import ServedModel

PAGE = 256  # lines tokenized per worker-thread call


def _texts(value: Any) -> Iterator[str | int]:
    """The text in `value` (a string, a part or item with text or content, or a list of them); a token array's length."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            yield len(value)
        else:
            for item in value:
                yield from _texts(item)
    elif isinstance(value, dict):
        for key in ("text", "content", "output", "arguments"):
            if key in value:
                yield from _texts(value[key])


def line_input(endpoint: str, body: dict[str, Any]) -> list[str | int]:
    """The input of one line's request body: strings to tokenize, and token counts already known."""
    if endpoint == "/v1/chat/completions":
        return list(_texts(body.get("messages")))
    if endpoint == "/v1/completions":
        return list(_texts(body.get("prompt")))
    if endpoint == "/v1/embeddings":
        return list(_texts(body.get("input")))
    return [*_texts(body.get("instructions")), *_texts(body.get("input"))]  # /v1/responses


def tokenizer_of(model: ServedModel) -> Callable[[str], list[int]]:
    if model.engine is not None:
        return model.engine.tokenize
    assert model.embedder is not None, "a served model generates or embeds"
    return model.embedder.tokenize


class EnqueuedTokens:
    """Adds up the input tokens of the lines it is given, tokenizing a page at a time off the event loop."""

    def __init__(self, endpoint: str, model: ServedModel) -> None:
        self._endpoint = endpoint
        self._tokenize = tokenizer_of(model)
        self._pending: list[str | int] = []
        self.total = 0

    async def add(self, body: dict[str, Any]) -> None:
        self._pending += line_input(self._endpoint, body)
        if len(self._pending) >= PAGE:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self.total += await anyio.to_thread.run_sync(self._count, pending)

    def _count(self, pending: list[str | int]) -> int:
        return sum(item if isinstance(item, int) else len(self._tokenize(item)) for item in pending)
