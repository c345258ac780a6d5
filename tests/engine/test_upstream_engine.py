"""The upstream engine against tiny misbehaving servers on loopback: events, failover, circuit
breaking, health checks, and errors that are OpenAI-shaped and never carry the upstream's URL,
key or internals (in what the client sees or in any log record)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import pytest

from modelhost.engine.base import (
    ChoiceFinished,
    EngineFailed,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    ToolCallDelta,
    UpstreamInput,
    UsageReported,
)
from modelhost.engine.cache_salt import CacheSalts
from modelhost.engine.upstream import UpstreamEngine
from modelhost.errors import APIError
from modelhost.pipeline.engine_errors import client_error

from support.misbehaving_upstream import MisbehavingUpstream

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def up() -> Iterator[MisbehavingUpstream]:
    with MisbehavingUpstream() as server:
        yield server


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


def engine_for(urls: list[str], behaviour: str, **options: object) -> UpstreamEngine:
    settings: dict[str, object] = {"read_timeout": 5.0, "health_interval": 0.0, "cooldown": 30.0}
    settings.update(options)
    return UpstreamEngine(
        model_id="ours", base_urls=urls, upstream_model=behaviour, context_length=2048, api_key=UPSTREAM_KEY, **settings  # type: ignore[arg-type]
    )


def request(body: dict[str, object] = CHAT, endpoint: str = "chat/completions", n: int = 1) -> GenerationRequest:
    return GenerationRequest("req-1", (), SamplingParams(max_tokens=4), n=n, upstream=UpstreamInput(endpoint, body, 5))


async def collect(engine: UpstreamEngine, req: GenerationRequest | None = None) -> tuple[list[object], APIError | None]:
    events: list[object] = []
    try:
        async for event in engine.submit(req or request()):
            events.append(event)
    except EngineFailed as exc:
        error = client_error(exc)
        assert error.status != 500, "every upstream failure tells the client something precise"
        return events, error
    return events, None


def forward(urls: list[str], behaviour: str, **options: object) -> tuple[list[object], APIError | None, UpstreamEngine]:
    async def go() -> tuple[list[object], APIError | None, UpstreamEngine]:
        engine = engine_for(urls, behaviour, **options)
        await engine.start()
        try:
            events, error = await collect(engine)
        finally:
            await engine.stop()
        return events, error, engine

    return asyncio.run(go())


def assert_no_internals(up: MisbehavingUpstream, error: APIError | None, logs: pytest.LogCaptureFixture) -> None:
    texts = [r.getMessage() for r in logs.records]
    if error is not None:
        texts.append(str(error.body()))
    for text in texts:
        for secret in [*up.url_fragments(), UPSTREAM_KEY, "secret_engine"]:
            assert secret not in text, f"{secret!r} leaked into {text!r}"


def test_a_stream_becomes_engine_events_with_the_upstreams_usage(up: MisbehavingUpstream, logs) -> None:  # type: ignore[no-untyped-def]
    events, error, _ = forward([up.base_url], "good")
    assert error is None
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", " there"]
    assert [(e.index, e.reason) for e in events if isinstance(e, ChoiceFinished)] == [(0, "stop")]
    assert [e for e in events if isinstance(e, UsageReported)] == [UsageReported(11, 2, 0)]
    sent, headers = up.bodies[-1], up.headers[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "good" and sent["messages"] == CHAT["messages"] and "n" not in sent
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert_no_internals(up, error, logs)


def test_a_server_that_ignores_stream_is_read_as_one_completion(up: MisbehavingUpstream) -> None:
    events, error, _ = forward([up.base_url], "whole-json")
    assert error is None
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["whole answer"]
    assert UsageReported(5, 2, 0) in events


def test_tool_calls_come_back_as_tool_call_events(up: MisbehavingUpstream) -> None:
    events, error, _ = forward([up.base_url], "tool-call")
    assert error is None
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls[0] == ToolCallDelta(0, 0, "call_up1", "get_weather", "")
    assert "".join(c.arguments for c in calls) == '{"city": "Paris"}'
    assert [e.reason for e in events if isinstance(e, ChoiceFinished)] == ["tool_calls"]


@pytest.mark.parametrize(
    ("behaviour", "status", "error_type", "code"),
    [
        ("bad-request", 400, "invalid_request_error", "invalid_value"),
        ("unprocessable", 400, "invalid_request_error", "invalid_value"),
        ("context", 400, "invalid_request_error", "context_length_exceeded"),
        ("unauthorized", 502, "server_error", "bad_gateway"),
        ("no-such-upstream-model", 502, "server_error", "bad_gateway"),
        ("crash", 502, "server_error", "bad_gateway"),
        ("overloaded", 503, "server_error", "overloaded"),
        ("rate-limited", 503, "server_error", "overloaded"),
        ("malformed", 502, "server_error", "bad_gateway"),
        ("truncated", 502, "server_error", "bad_gateway"),
        ("error-event", 502, "server_error", "bad_gateway"),
        ("malformed-later", 502, "server_error", "bad_gateway"),
    ],
)
def test_upstream_failures_become_openai_errors_without_internals(  # type: ignore[no-untyped-def]
    up: MisbehavingUpstream, logs, behaviour: str, status: int, error_type: str, code: str
) -> None:
    _, error, _ = forward([up.base_url], behaviour)
    assert error is not None
    body = error.body()["error"]
    assert (error.status, body["type"], body["code"]) == (status, error_type, code)  # type: ignore[index]
    assert body["message"]  # type: ignore[index]
    assert_no_internals(up, error, logs)


def test_an_upstream_400_keeps_its_message_and_param_but_names_our_model(up: MisbehavingUpstream) -> None:
    _, error, _ = forward([up.base_url], "bad-request")
    assert error is not None
    body = error.body()["error"]
    assert body["param"] == "temperature"  # type: ignore[index]
    assert "'temperature' is invalid" in body["message"] and "model ours" in body["message"]  # type: ignore[index]
    assert "bad-request" not in body["message"]  # type: ignore[index]


def test_overload_passes_on_the_upstreams_retry_after(up: MisbehavingUpstream) -> None:
    _, error, _ = forward([up.base_url], "overloaded")
    assert error is not None and error.headers == {"Retry-After": "7"}


def test_a_hanging_upstream_is_a_504_after_the_read_timeout(up: MisbehavingUpstream, logs) -> None:  # type: ignore[no-untyped-def]
    events, error, _ = forward([up.base_url], "hang", read_timeout=0.5)
    assert events == [] and error is not None and error.status == 504
    events, error, _ = forward([up.base_url], "hang-mid-stream", read_timeout=0.5)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel"]
    assert error is not None and error.status == 504
    assert_no_internals(up, error, logs)


def test_connect_errors_fail_over_to_the_next_replica_and_open_the_circuit(up: MisbehavingUpstream, logs) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        engine = engine_for([closed_port_url(), up.base_url], "good", failure_threshold=1)
        await engine.start()
        try:
            before = up.requests["good"]
            for _ in range(3):
                events, error = await collect(engine)
                assert error is None and any(isinstance(e, ChoiceFinished) for e in events)
            assert up.requests["good"] == before + 3
            dead, alive = engine.pool.replicas
            assert dead.breaker.state == "open" and dead.picks == 1  # tried once, then skipped
            assert alive.breaker.state == "closed" and alive.picks == 3
        finally:
            await engine.stop()

    asyncio.run(go())
    assert_no_internals(up, None, logs)


def test_no_reachable_replica_is_a_503_with_retry_after(logs) -> None:  # type: ignore[no-untyped-def]
    urls = [closed_port_url(), closed_port_url()]
    _, error, engine = forward(urls, "good", failure_threshold=1, cooldown=4.0)
    assert error is not None and error.status == 503 and error.code == "upstream_unavailable"
    assert 1 <= int(error.headers["Retry-After"]) <= 4
    assert all(r.breaker.state == "open" for r in engine.pool.replicas)
    for record in logs.records:
        assert "127.0.0.1" not in record.getMessage()


@pytest.mark.parametrize("behaviour", ["crash", "truncated", "error-event", "hang"])
def test_a_request_that_reached_an_upstream_is_never_sent_again(behaviour: str) -> None:
    with MisbehavingUpstream() as first, MisbehavingUpstream() as second:
        _, error, _ = forward([first.base_url, second.base_url], behaviour, read_timeout=0.5)
        assert error is not None
        assert first.requests[behaviour] + second.requests[behaviour] == 1


def test_requests_go_to_the_replica_with_the_fewest_in_flight() -> None:
    with MisbehavingUpstream() as first, MisbehavingUpstream() as second:

        async def go() -> None:
            engine = engine_for([first.base_url, second.base_url], "slow")
            await engine.start()
            try:
                results = await asyncio.gather(*(collect(engine) for _ in range(4)))
                assert all(error is None for _, error in results)
            finally:
                await engine.stop()

        asyncio.run(go())
        assert (first.requests["slow"], second.requests["slow"]) == (2, 2)


def test_health_checks_take_a_replica_out_and_bring_it_back() -> None:
    with MisbehavingUpstream() as sick, MisbehavingUpstream() as well:

        async def go() -> None:
            sick.healthy = False
            engine = engine_for([sick.base_url, well.base_url], "good", health_interval=0.1)
            await engine.start()
            try:
                await asyncio.sleep(0.3)
                assert [r.breaker.state for r in engine.pool.replicas] == ["open", "closed"]
                for _ in range(2):
                    assert (await collect(engine))[1] is None
                assert (sick.requests["good"], well.requests["good"]) == (0, 2)
                sick.healthy = True
                await asyncio.sleep(0.3)
                assert engine.pool.replicas[0].breaker.state == "closed"
            finally:
                await engine.stop()

        asyncio.run(go())


def test_cancel_closes_the_upstream_connection(up: MisbehavingUpstream) -> None:
    async def go() -> None:
        engine = engine_for([up.base_url], "slow")
        await engine.start()
        try:
            generation = engine.submit(request())
            async for event in generation:
                if isinstance(event, TextDelta):
                    break
            generation.cancel()
            await asyncio.sleep(0.05)
            assert engine.pool.outstanding == 0
        finally:
            await engine.stop()

    asyncio.run(go())


def test_n_and_legacy_completions_are_forwarded(up: MisbehavingUpstream) -> None:
    async def go() -> None:
        engine = engine_for([up.base_url], "good")
        await engine.start()
        try:
            await collect(engine, request({"prompt": [1, 2, 3], "echo": True}, endpoint="completions", n=2))
        finally:
            await engine.stop()

    asyncio.run(go())
    sent = up.bodies[-1]
    assert sent["n"] == 2 and sent["prompt"] == [1, 2, 3] and sent["echo"] is True


def test_a_forwarding_engine_has_no_tokenizer() -> None:
    engine = engine_for(["http://127.0.0.1:9/v1"], "good")
    assert engine.forwards_requests
    with pytest.raises(TypeError, match="forwards requests upstream"):
        engine.tokenize("hello")
    with pytest.raises(TypeError):
        engine.vocab_size  # noqa: B018


SALTS = CacheSalts(b"a-test-secret-of-32-bytes-000000")


def cached_tokens_seen(up: MisbehavingUpstream, orgs: list[str], **options: object) -> list[int]:
    """The same prompt sent for each organization in turn; the cached_tokens each one was told."""

    async def go() -> list[int]:
        engine = engine_for([up.base_url], "prefix-cache", **options)
        await engine.start()
        try:
            seen = []
            for org in orgs:
                req = GenerationRequest("r", (), SamplingParams(max_tokens=4), cache_scope=org, upstream=UpstreamInput("chat/completions", CHAT, 5))
                events, error = await collect(engine, req)
                assert error is None
                seen += [e.cached_tokens for e in events if isinstance(e, UsageReported)]
            return seen
        finally:
            await engine.stop()

    up.prefix_cache.clear()
    return asyncio.run(go())


def test_a_salted_upstream_gets_each_organizations_cache_salt_and_reuses_only_its_prefixes(up: MisbehavingUpstream) -> None:
    assert cached_tokens_seen(up, ["org-a", "org-b", "org-a"], cache_salts=SALTS, salt_requests=True) == [0, 0, 11]
    salts = [body["cache_salt"] for body in up.bodies[-3:]]
    assert salts == [SALTS.of("org-a"), SALTS.of("org-b"), SALTS.of("org-a")] and salts[0] != salts[1]
    assert all("org-" not in salt for salt in salts)  # derived with the server's secret, not the visible id


def test_an_unsalted_upstream_gets_no_salt_and_its_cached_tokens_are_reported_as_zero(up: MisbehavingUpstream) -> None:
    # Its cache is shared: org-b's request hits org-a's prefix upstream, and must not be told so.
    assert cached_tokens_seen(up, ["org-a", "org-b"], cache_salts=SALTS) == [0, 0]
    assert all("cache_salt" not in body for body in up.bodies[-2:])


def test_an_upstream_error_that_repeats_our_key_is_relayed_without_it(up: MisbehavingUpstream, logs) -> None:  # type: ignore[no-untyped-def]
    _, error, _ = forward([up.base_url], "echo-key")
    assert error is not None and error.status == 400
    body = error.body()["error"]
    assert body["param"] is None and body["code"] is None  # type: ignore[index]  # they were the key
    assert "invalid 'temperature'" in body["message"] and "(secret)" in body["message"]  # type: ignore[index]
    for fragment in (UPSTREAM_KEY, UPSTREAM_KEY[:12], UPSTREAM_KEY[3:20], "secret-0123"):
        assert fragment not in str(body), fragment
    assert_no_internals(up, error, logs)


def test_log_records_of_a_running_upstream_engine_never_carry_its_key(up: MisbehavingUpstream, logs) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        engine = engine_for([up.base_url], "good")
        await engine.start()
        try:
            log = logging.getLogger("modelhost.engine.upstream")
            log.warning("oops %s", f"Authorization: Bearer {UPSTREAM_KEY}")
            try:
                raise RuntimeError(f"client sent {UPSTREAM_KEY}")
            except RuntimeError:
                log.exception("failed")
        finally:
            await engine.stop()

    asyncio.run(go())
    texts = [logging.Formatter().format(r) for r in logs.records]
    assert any("oops" in t for t in texts) and any("RuntimeError" in t for t in texts)
    assert not any(UPSTREAM_KEY in t or UPSTREAM_KEY[:12] in t for t in texts), texts
