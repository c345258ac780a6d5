"""Chat completions through the official Python SDK against the real bundled model."""

from __future__ import annotations

import asyncio

import openai
import pytest

from serverproc import EMBEDDING_MODEL, ServerProcess, wait_for_entry
from support.openapi_spec import validate

HI = [{"role": "user", "content": "Say hi"}]


def test_chat_completion_matches_openai_schema_and_counts_usage(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=6)
    body = raw.http_response.json()
    validate("CreateChatCompletionResponse", body)
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == model
    assert completion.system_fingerprint.startswith("fp_")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert body["choices"][0]["message"]["refusal"] is None
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    entry = wait_for_entry(server, completion.id)
    assert (entry.prompt_tokens, entry.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert entry.outcome == "completed"


def test_response_headers_are_openais(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=1)
    headers = raw.http_response.headers
    assert headers["x-request-id"]
    assert headers["openai-organization"].startswith("org-")
    assert int(headers["openai-processing-ms"]) >= 0
    assert headers["openai-version"]


def test_client_request_id_is_honoured(client: openai.OpenAI, model: str) -> None:
    raw = client.models.with_raw_response.list(extra_headers={"X-Request-Id": "my-trace-123"})
    assert raw.http_response.headers["x-request-id"] == "my-trace-123"


def test_max_tokens_stops_with_length(client: openai.OpenAI, model: str) -> None:
    # Suppress the end-of-turn token so the model cannot stop before the limit.
    completion = client.chat.completions.create(
        model=model, messages=HI, max_completion_tokens=3, logit_bias={"2": -100}
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_stop_string_is_not_emitted(client: openai.OpenAI, model: str) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    free = client.chat.completions.create(model=model, messages=messages, max_tokens=30, temperature=0)
    text = free.choices[0].message.content
    assert "," in text, text
    stopped = client.chat.completions.create(model=model, messages=messages, max_tokens=30, temperature=0, stop=[","])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text.split(",")[0]


def test_n_two_returns_two_choices_and_sums_usage(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=HI, n=2, max_tokens=4, logit_bias={"2": -100}, seed=1
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.usage.completion_tokens == 8


def test_the_seed_chooses_the_sample(client: openai.OpenAI, model: str) -> None:
    """Different seeds give different samples (a server that ignored `seed` would pass the
    reproducibility test below by being deterministic; greedy decoding, at temperature 0, would too)."""
    story = [{"role": "user", "content": "Tell me a story"}]
    texts = {
        client.chat.completions.create(model=model, messages=story, max_tokens=8, temperature=1.0, seed=seed).choices[0].message.content
        for seed in (1, 2, 3)
    }
    assert len(texts) > 1


def test_seed_with_sampling_is_reproducible(client: openai.OpenAI, model: str) -> None:
    story = [{"role": "user", "content": "Tell me a story"}]
    runs = [
        client.chat.completions.create(model=model, messages=story, max_tokens=8, temperature=1.0, seed=1234)
        for _ in range(2)
    ]
    assert runs[0].choices[0].message.content == runs[1].choices[0].message.content


def test_streaming_with_include_usage(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    import httpx

    stream = client.chat.completions.create(
        model=model, messages=HI, max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.completion_tokens <= 5
    assert len({c.id for c in chunks}) == 1

    # The raw bytes: every chunk validates against the spec, then `data: [DONE]`.
    with httpx.stream(
        "POST",
        f"{server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": model, "messages": HI, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    import json

    for event in events[:-1]:
        validate("CreateChatCompletionStreamResponse", json.loads(event))
    entry = wait_for_entry(server, chunks[0].id)
    assert entry.completion_tokens == chunks[-1].usage.completion_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI, model: str) -> None:
    chunks = list(client.chat.completions.create(model=model, messages=HI, max_tokens=3, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_all_message_roles_and_text_parts_are_accepted(client: openai.OpenAI, model: str) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in one word."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again", "name": "bob"},
    ]
    completion = client.chat.completions.create(model=model, messages=messages, max_tokens=2, user="u-1")
    assert completion.choices[0].message.content is not None


def test_unknown_fields_are_accepted_and_ignored(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=HI, max_tokens=1, extra_body={"some_future_field": {"x": 1}}, store=False
    )
    assert completion.choices


def test_async_clients_run_concurrently(server: ServerProcess, project_key, model: str) -> None:  # type: ignore[no-untyped-def]
    async def main() -> list[openai.types.chat.ChatCompletion]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=project_key.secret, max_retries=0)
        async with client:
            return await asyncio.gather(
                *[
                    client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": f"Say {i}"}], max_tokens=4
                    )
                    for i in range(6)
                ]
            )

    results = asyncio.run(main())
    assert len({r.id for r in results}) == 6
    assert all(r.choices[0].message.content is not None for r in results)


@pytest.mark.parametrize("stream", [False, True])
def test_images_are_rejected_for_a_text_model(client: openai.OpenAI, model: str, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model,
            stream=stream,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://10.0.0.1/x.png"}}]}],
        )
    assert info.value.body["param"] == "messages[0].content[0].type"


def test_models_list_and_retrieve_match_openai_schema(client: openai.OpenAI, model: str) -> None:
    listed = client.models.with_raw_response.list().http_response.json()
    validate("ListModelsResponse", listed)
    assert [m["id"] for m in listed["data"]] == [model, EMBEDDING_MODEL]
    retrieved = client.models.with_raw_response.retrieve(model).http_response.json()
    validate("Model", retrieved)
    assert retrieved["owned_by"]


def test_logprobs_report_each_token_with_exactly_top_logprobs_alternatives(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=HI, max_tokens=4, logprobs=True, top_logprobs=3, logit_bias={"2": -100}
    )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens == 4
    # Token strings escape bytes that are not whole characters (as OpenAI's do); the bytes add up.
    # (Four tokens can end inside a character: the text then ends with U+FFFD, as decoding says.)
    assert b"".join(bytes(t.bytes) for t in content).decode(errors="replace") == completion.choices[0].message.content
    for token in content:
        assert token.logprob <= 0
        assert bytes(token.bytes).decode("utf-8", "backslashreplace") == token.token
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob


def test_logprobs_in_streamed_chunks(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model, messages=HI, max_tokens=3, logprobs=True, top_logprobs=0, stream=True, logit_bias={"2": -100}
        )
    )
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert len(tokens) == 3
    assert all(t.top_logprobs == [] for t in tokens)


def test_top_logprobs_without_logprobs_is_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=HI, max_tokens=1, top_logprobs=2)
    assert info.value.param == "top_logprobs"


def test_shared_prefix_is_reused_within_an_organization(client: openai.OpenAI, model: str) -> None:
    system = {"role": "system", "content": "You are a careful assistant. " * 40}
    first = client.chat.completions.create(model=model, messages=[system, {"role": "user", "content": "One"}], max_tokens=1)
    second = client.chat.completions.create(model=model, messages=[system, {"role": "user", "content": "Two"}], max_tokens=1)
    assert first.usage.prompt_tokens > 200
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 200, cached


def test_seeded_request_is_identical_alone_and_among_concurrent_requests(server: ServerProcess, project_key, model: str) -> None:  # type: ignore[no-untyped-def]
    story = [{"role": "user", "content": "Tell me a story about a fox."}]
    kwargs = {"model": model, "max_tokens": 24, "temperature": 1.0, "seed": 99, "logit_bias": {"2": -100}}

    async def main() -> tuple[str, list[str]]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=project_key.secret, max_retries=0)
        async with client:
            alone = await client.chat.completions.create(messages=story, **kwargs)
            others = [
                client.chat.completions.create(
                    messages=[{"role": "user", "content": f"Write about topic {i}"}], **{**kwargs, "seed": i}
                )
                for i in range(7)
            ]
            together = await asyncio.gather(client.chat.completions.create(messages=story, **kwargs), *others)
            return alone.choices[0].message.content, [together[0].choices[0].message.content]

    alone, together = asyncio.run(main())
    assert together == [alone]
