"""The bundled model, once: a batch request preempted by an interactive one on a one-slot engine
recomputes its KV and goes on with the text it would have had (greedy, a few tokens)."""

from __future__ import annotations

import asyncio

from modelhost.engine.base import ChoiceFinished, GenerationRequest, Priority, SamplingParams, TextDelta
from modelhost.engine.llama_model import LlamaModel, bundled_model_path
from modelhost.engine.llamacpp import LlamaCppEngine


async def _text(iterator) -> str:  # type: ignore[no-untyped-def]
    return "".join([e.text async for e in iterator if isinstance(e, TextDelta)])


def test_a_preempted_batch_request_resumes_with_the_text_it_would_have_had() -> None:
    model = LlamaModel(bundled_model_path())
    engine = LlamaCppEngine(model, model_id="m", slots=1, slot_context=256, batch_tokens=64, threads=2, flash_attention=False)

    def request(rid: str, text: str, max_tokens: int, priority: Priority) -> GenerationRequest:
        return GenerationRequest(rid, model.tokenize(text), SamplingParams(max_tokens=max_tokens, temperature=0, seed=7), priority=priority)

    async def main() -> None:
        await engine.start()
        try:
            prompt = "The three primary colours are"
            alone = await _text(engine.submit(request("alone", prompt, 16, Priority.BATCH)))
            line = engine.submit(request("line", prompt, 16, Priority.BATCH))
            iterator = line.__aiter__()
            first = ""
            while len(first) < 8:  # a few tokens out before the interactive request arrives
                event = await iterator.__anext__()
                if isinstance(event, TextDelta):
                    first += event.text
                assert not isinstance(event, ChoiceFinished)
            chat = engine.submit(request("chat", "Paris is the capital of", 4, Priority.INTERACTIVE))
            rest, _ = await asyncio.gather(_text(iterator), _text(chat))
            assert line.preemptions == 1  # type: ignore[attr-defined]
            assert first + rest == alone
        finally:
            await engine.stop()
            model.close()

    asyncio.run(main())
