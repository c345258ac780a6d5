"""Legacy completions through the official SDK: every parameter, on the same pipeline as chat."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from serverproc import ServerProcess, wait_for_entry
from support.openapi_spec import validate

NO_EOS = {"2": -100, "0": -100}  # suppress end-of-text tokens for exact token counts


def test_string_prompt_defaults_to_16_tokens_and_matches_the_spec(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    raw = client.completions.with_raw_response.create(model=model, prompt="Once upon a time", logit_bias=NO_EOS)
    body = raw.http_response.json()
    validate("CreateCompletionResponse", body)
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.usage.completion_tokens == 16
    assert completion.choices[0].finish_reason == "length"
    assert wait_for_entry(server, completion.id).operation == "completions"


def test_prompt_forms_list_of_strings_token_arrays(client: openai.OpenAI, model: str) -> None:
    many = client.completions.create(model=model, prompt=["The sky is", "Water is"], max_tokens=2, n=2, logit_bias=NO_EOS)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.usage.completion_tokens == 8
    tokens = client.completions.create(model=model, prompt=[504, 3621, 314], max_tokens=2, logit_bias=NO_EOS)
    assert tokens.usage.prompt_tokens == 3
    arrays = client.completions.create(model=model, prompt=[[504, 3621], [314]], max_tokens=1, logit_bias=NO_EOS)
    assert len(arrays.choices) == 2 and arrays.usage.prompt_tokens == 3


def test_invalid_token_id_is_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=[10**8], max_tokens=1)
    assert info.value.param == "prompt"


def test_echo_with_logprobs_includes_the_prompt(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(
        model=model, prompt="Hello world", max_tokens=3, echo=True, logprobs=2, logit_bias=NO_EOS, temperature=0
    )
    choice = completion.choices[0]
    assert choice.text.startswith("Hello world")
    lp = choice.logprobs
    n_prompt = completion.usage.prompt_tokens
    assert len(lp.tokens) == n_prompt + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    assert all(len(t) == 2 for t in lp.top_logprobs[1:])
    # Greedy, so the text is fixed: plain ASCII tokens, which join back into the text exactly.
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_echo_with_zero_max_tokens_returns_the_prompt(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(model=model, prompt="Just this", max_tokens=0, echo=True)
    assert completion.choices[0].text == "Just this"
    assert completion.usage.completion_tokens == 0


def test_logprobs_without_echo(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(model=model, prompt="1, 2, 3,", max_tokens=4, logprobs=5, logit_bias=NO_EOS)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.top_logprobs[0]) == 5


def test_best_of_returns_n_of_the_candidates_and_bills_all(client: openai.OpenAI, model: str) -> None:
    completion = client.completions.create(model=model, prompt="A poem:", max_tokens=3, n=1, best_of=3, seed=3, logit_bias=NO_EOS)
    assert len(completion.choices) == 1
    assert completion.choices[0].logprobs is None
    assert completion.usage.completion_tokens == 9


def test_best_of_smaller_than_n_or_streamed_is_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="x", n=3, best_of=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="x", n=1, best_of=2, stream=True)


def test_suffix_is_400_unsupported(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="def f(", suffix="return x")
    assert info.value.code == "unsupported" and info.value.param == "suffix"


def test_stop_seed_penalties_and_bias(client: openai.OpenAI, model: str) -> None:
    a = client.completions.create(model=model, prompt="Count: 1, 2,", max_tokens=12, seed=7, temperature=0.8, presence_penalty=0.5, frequency_penalty=0.5)
    b = client.completions.create(model=model, prompt="Count: 1, 2,", max_tokens=12, seed=7, temperature=0.8, presence_penalty=0.5, frequency_penalty=0.5)
    assert a.choices[0].text == b.choices[0].text
    stopped = client.completions.create(model=model, prompt="Count: 1, 2,", max_tokens=12, temperature=0, stop=[","])
    assert "," not in stopped.choices[0].text
    forced = client.completions.create(model=model, prompt="x", max_tokens=3, logit_bias={"314": 100})
    assert forced.usage.completion_tokens == 3


def test_streaming_with_usage(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    chunks = list(
        client.completions.create(model=model, prompt="Hello", max_tokens=4, stream=True, stream_options={"include_usage": True}, logit_bias=NO_EOS)
    )
    assert chunks[-1].usage.completion_tokens == 4
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    with httpx.stream(
        "POST",
        f"{server.base_url}/completions",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": model, "prompt": "Hi", "max_tokens": 2, "stream": True},
        timeout=60,
    ) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event)
        # OpenAI streams `finish_reason: null` until a choice ends (the SDKs expect it); the spec
        # shares one schema for chunks and the final body and only describes the final value.
        for choice in chunk["choices"]:
            assert choice["finish_reason"] in (None, "stop", "length")
            choice["finish_reason"] = choice["finish_reason"] or "length"
        validate("CreateCompletionResponse", chunk)


def test_prompt_too_long_is_context_length_exceeded(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="word " * 5000, max_tokens=1)
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"
