"""SSE framing, chunk → event mapping and the replica circuit breaker, without a network."""

from __future__ import annotations

import pytest

from modelhost.engine.base import ChoiceFinished, TextDelta, TokenLogprob, ToolCallDelta, UsageReported
from modelhost.engine.upstream_pool import CircuitBreaker, UpstreamPool
from modelhost.engine.upstream_stream import ChunkReader, SSEDecoder, UpstreamProtocolError


def test_sse_events_split_on_any_line_ending_and_across_reads() -> None:
    decoder = SSEDecoder()
    stream = b': ping\r\n\r\ndata: {"a":1}\r\n\r\ndata: one\ndata: two\n\nevent: x\rdata:[DONE]\r\r'
    events = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert events == ['{"a":1}', "one\ntwo"]  # a final lone \r may still be the start of \r\n
    assert decoder.close() == ["[DONE]"]


def test_sse_last_event_without_blank_line_is_kept_and_huge_events_refused() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: tail") == []
    assert decoder.close() == ["tail"]
    with pytest.raises(UpstreamProtocolError):
        SSEDecoder(max_event_bytes=16).feed(b"data: " + b"x" * 64)


def chat_chunk(index: int = 0, **delta: object) -> dict[str, object]:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": None}]}


def test_chat_chunks_become_text_tool_call_finish_and_usage_events() -> None:
    reader = ChunkReader("chat/completions", n=2, report_cached=True)  # a salted upstream: its cache hits are the caller's
    events = reader.events(chat_chunk(1, role="assistant", content="Hi"))
    events += reader.events(chat_chunk(0, tool_calls=[{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{"}}]))
    events += reader.events({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}, {"index": 1, "delta": {}, "finish_reason": "eos_token"}]})
    events += reader.events({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}})
    assert events == [
        TextDelta(1, "Hi"),
        ToolCallDelta(0, 0, "call_1", "f", "{"),
        ChoiceFinished(0, "tool_calls", 1),
        ChoiceFinished(1, "stop", 1),  # a reason OpenAI does not have becomes "stop"
        UsageReported(7, 2, 4),
    ]
    assert reader.finished and reader.completion_tokens == 2


def test_cached_tokens_of_an_unsalted_upstream_are_reported_as_zero() -> None:
    # Its prefix cache is shared by every tenant: a hit may be a prefix another organization sent.
    reader = ChunkReader("chat/completions", n=1)
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}
    assert reader.events({"choices": [], "usage": usage}) == [UsageReported(7, 2, 0)]


def test_chat_logprobs_keep_bytes_and_alternatives() -> None:
    reader = ChunkReader("chat/completions", n=1)
    logprobs = {"content": [{"token": "é", "logprob": -0.5, "bytes": [195, 169], "top_logprobs": [{"token": "e", "logprob": -1.0, "bytes": None}]}]}
    (event,) = reader.events({"choices": [{"index": 0, "delta": {"content": "é"}, "logprobs": logprobs, "finish_reason": None}]})
    assert event == TextDelta(0, "é", (TokenLogprob(-1, "é".encode(), -0.5, ((-1, b"e", -1.0),)),))


def test_legacy_completion_chunks_map_text_and_logprobs() -> None:
    reader = ChunkReader("completions", n=1)
    logprobs = {"tokens": ["Hi", "!"], "token_logprobs": [None, -0.1], "top_logprobs": [None, {"!": -0.1, ".": -2.0}], "text_offset": [0, 2]}
    events = reader.events({"choices": [{"index": 0, "text": "Hi!", "logprobs": logprobs, "finish_reason": "length"}]})
    assert events[0] == TextDelta(0, "Hi!", (TokenLogprob(-1, b"Hi", None, ()), TokenLogprob(-1, b"!", -0.1, ((-1, b"!", -0.1), (-1, b".", -2.0)))))
    assert events[1] == ChoiceFinished(0, "length", 2)


@pytest.mark.parametrize(
    "chunk",
    [
        [],
        {"choices": {}},
        {"choices": [{"index": 3, "delta": {"content": "x"}}]},
        {"choices": [{"delta": {"content": "x"}}]},
        {"choices": [{"index": 0, "delta": {"content": 5}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "a"}]}}]},
        {"choices": [], "usage": {"prompt_tokens": -1}},
    ],
)
def test_chunks_outside_openais_format_are_protocol_errors(chunk: object) -> None:
    with pytest.raises(UpstreamProtocolError):
        ChunkReader("chat/completions", n=1).events(chunk)


def test_a_choice_that_continues_after_finishing_is_a_protocol_error() -> None:
    reader = ChunkReader("chat/completions", n=1)
    reader.events({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    with pytest.raises(UpstreamProtocolError):
        reader.events(chat_chunk(0, content="more"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_circuit_opens_after_the_threshold_and_lets_one_trial_through_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=clock)
    breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open" and not breaker.allows()
    clock.now = 10
    assert breaker.state == "half_open" and breaker.allows()
    breaker.begin()
    assert not breaker.allows()  # one trial at a time
    breaker.failed()
    assert breaker.state == "open"  # a failed trial reopens at once
    clock.now = 20
    breaker.begin()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allows()


def test_the_pool_picks_the_fewest_in_flight_and_rotates_among_equals() -> None:
    pool = UpstreamPool.of(["a", "b", "c"], failure_threshold=1, cooldown=5)
    picks = []
    for _ in range(3):
        replica = pool.choose(set())
        assert replica is not None
        replica.outstanding += 1
        picks.append(replica.index)
    assert sorted(picks) == [0, 1, 2]
    pool.replicas[0].outstanding = 0
    assert pool.choose(set()).index == 0  # type: ignore[union-attr]
    pool.replicas[0].breaker.failed()
    assert pool.choose({1}).index == 2  # type: ignore[union-attr]
    assert pool.choose({1, 2}) is None
    assert pool.state()[0]["circuit"] == "open" and 1 <= pool.retry_after() <= 5


def test_a_trial_that_ends_without_a_verdict_frees_the_half_open_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=1, clock=clock)
    breaker.failed()
    clock.now = 1
    breaker.begin()
    assert not breaker.allows()
    breaker.settled()  # the client went away before the upstream answered
    assert breaker.allows()
