"""Many users at once on the real model: every stream completes, and requests do not influence each other."""

from __future__ import annotations

import asyncio

import openai

from serverproc import ServerProcess

NO_EOS = {"0": -100, "2": -100}


def _client(server: ServerProcess, key) -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=key.secret, max_retries=0, timeout=300)


def test_sixteen_concurrent_streams_all_complete_with_correct_usage(server: ServerProcess, project_key, model: str) -> None:  # type: ignore[no-untyped-def]
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, int, str | None]:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Story number {i}"}],
            max_tokens=12,
            logit_bias=NO_EOS,
            stream=True,
            stream_options={"include_usage": True},
        )
        deltas = 0
        usage = None
        finish = None
        async for chunk in stream:
            if chunk.choices:
                deltas += bool(chunk.choices[0].delta.content)
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return deltas, usage or 0, finish

    async def main() -> list[tuple[int, int, str | None]]:
        async with _client(server, project_key) as client:
            return await asyncio.gather(*(one(client, i) for i in range(16)))

    results = asyncio.run(main())
    assert all(usage == 12 and finish == "length" and deltas > 0 for deltas, usage, finish in results), results


def test_concurrent_logit_bias_and_stop_do_not_leak_between_requests(server: ServerProcess, project_key, model: str) -> None:  # type: ignore[no-untyped-def]
    prompt = [{"role": "user", "content": "List some animals, separated by commas."}]
    base = {"model": model, "messages": prompt, "max_tokens": 16, "temperature": 0, "seed": 1}

    async def main() -> tuple[list[str], list[str]]:
        async with _client(server, project_key) as client:
            alone = [
                (await client.chat.completions.create(**base)).choices[0].message.content,  # type: ignore[arg-type]
                (await client.chat.completions.create(**base, stop=[","])).choices[0].message.content,  # type: ignore[arg-type]
                (await client.chat.completions.create(**base, logit_bias={"28": -100, "30": -100})).choices[0].message.content,  # type: ignore[arg-type]
            ]
            together = await asyncio.gather(
                client.chat.completions.create(**base),  # type: ignore[arg-type]
                client.chat.completions.create(**base, stop=[","]),  # type: ignore[arg-type]
                client.chat.completions.create(**base, logit_bias={"28": -100, "30": -100}),  # type: ignore[arg-type]
            )
            return alone, [c.choices[0].message.content for c in together]  # type: ignore[misc]

    alone, together = asyncio.run(main())
    assert together == alone
    assert "," not in alone[1]
