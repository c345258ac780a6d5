"""Every engine error becomes exactly the client error it always was: status, type, message, param,
code and Retry-After (pipeline/engine_errors.py, the one place engine errors are translated)."""

from __future__ import annotations

import pytest

from modelhost.engine.base import EngineError, EngineFailed, EngineOverloaded
from modelhost.engine.embedding.base import EmbedderFailed, EmbedderOverloaded
from modelhost.engine.fair_share import RefusedAfterWaiting
from modelhost.engine.grammar_errors import GrammarCompilerBusy, GrammarError
from modelhost.engine.upstream_errors import UpstreamFailed, UpstreamFault, UpstreamOverloaded, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from modelhost.errors import APIError
from modelhost.pipeline.engine_errors import client_error

OVERLOADED = (503, "server_error", "The server is overloaded; retry shortly.", None, "overloaded", {"Retry-After": "1"})


def told(error: APIError) -> tuple[int, str, str, str | None, str | None, dict[str, str]]:
    return error.status, error.type, error.message, error.param, error.code, error.headers


def rejected(status: int, message: str = "", param: str | None = None, code: str | None = None) -> UpstreamRejected:
    return UpstreamRejected(f"upstream HTTP {status}", status=status, upstream_message=message, param=param, code=code)


CASES: list[tuple[EngineError, tuple[int, str, str, str | None, str | None, dict[str, str]]]] = [
    (EngineOverloaded("The engine's queue is full."), OVERLOADED),
    (EmbedderOverloaded("3 embedding jobs are already waiting"), OVERLOADED),
    (RefusedAfterWaiting("This project holds its share of the engine's queue."), OVERLOADED),
    (
        GrammarCompilerBusy("this organization's compiles are all taken", per_organization=True),
        (503, "server_error", "Too many schemas of this organization are being compiled at once; retry shortly.", None, "overloaded", {"Retry-After": "1"}),
    ),
    (
        GrammarCompilerBusy("no compile worker was free in time", per_organization=False),
        (503, "server_error", "The server is compiling too many schemas at once; retry shortly.", None, "overloaded", {"Retry-After": "1"}),
    ),
    (EngineFailed("decode failed (-1)"), (500, "server_error", "The model failed while generating; retry the request.", None, None, {})),
    (EmbedderFailed("llama_decode returned 1"), (500, "server_error", "The model failed while embedding; retry the request.", None, None, {})),
    (
        rejected(400, "Invalid value for 'temperature'.", "temperature", "invalid_value"),
        (400, "invalid_request_error", "Invalid value for 'temperature'.", "temperature", "invalid_value", {}),
    ),
    (rejected(422, "Field required."), (400, "invalid_request_error", "Field required.", None, None, {})),
    (rejected(413), (413, "invalid_request_error", "The model's upstream server rejected the request (HTTP 413).", None, None, {})),
    (
        rejected(400, "This model's maximum context length is 2048 tokens.", code="context_length_exceeded"),
        (400, "invalid_request_error", "This model's maximum context length is 2048 tokens.", "messages", "context_length_exceeded", {}),
    ),
    (
        rejected(400, "Too long.", param="prompt", code="context_length_exceeded"),
        (400, "invalid_request_error", "Too long.", "prompt", "context_length_exceeded", {}),
    ),
    (
        UpstreamOverloaded("upstream HTTP 429", retry_after=7),
        (503, "server_error", "The model's upstream server is overloaded; retry shortly.", None, "overloaded", {"Retry-After": "7"}),
    ),
    (
        UpstreamUnavailable("no upstream replica", unreachable=True, retry_after=1),
        (503, "server_error", "The model's upstream servers cannot be reached right now; retry shortly.", None, "upstream_unavailable", {"Retry-After": "1"}),
    ),
    (
        UpstreamUnavailable("no upstream replica", unreachable=False, retry_after=9),
        (503, "server_error", "The model's upstream servers are failing; retry shortly.", None, "upstream_unavailable", {"Retry-After": "9"}),
    ),
    (
        UpstreamTimeout("upstream timeout"),
        (504, "server_error", "The model's upstream server did not answer in time; retry the request.", None, "gateway_timeout", {}),
    ),
    (
        UpstreamTimeout("upstream read timeout", began=True),
        (504, "server_error", "The model's upstream server stopped answering; retry the request.", None, "gateway_timeout", {}),
    ),
    (
        UpstreamFailed("ZeroDivisionError", UpstreamFault.CRASHED),
        (502, "server_error", "The model's upstream server failed; retry the request.", None, "bad_gateway", {}),
    ),
    (
        UpstreamFailed("upstream connection failed", UpstreamFault.CONNECTION_FAILED),
        (502, "server_error", "The connection to the model's upstream server failed; retry the request.", None, "bad_gateway", {}),
    ),
    (
        UpstreamFailed("upstream HTTP 401", UpstreamFault.MISCONFIGURED, status=401),
        (
            502,
            "server_error",
            "The model's upstream server refused the request modelhost sent; the operator must fix this model's configuration.",
            None,
            "bad_gateway",
            {},
        ),
    ),
    (
        UpstreamFailed("upstream HTTP 500", UpstreamFault.SERVER_ERROR, status=500),
        (502, "server_error", "The model's upstream server failed (HTTP 500); retry the request.", None, "bad_gateway", {}),
    ),
    (
        UpstreamFailed("malformed upstream response", UpstreamFault.MALFORMED),
        (502, "server_error", "The model's upstream server sent a malformed response; retry the request.", None, "bad_gateway", {}),
    ),
    (
        UpstreamFailed("upstream stream broken", UpstreamFault.CONNECTION_BROKEN),
        (502, "server_error", "The connection to the model's upstream server broke while generating; retry the request.", None, "bad_gateway", {}),
    ),
    (
        UpstreamFailed("upstream stream truncated", UpstreamFault.TRUNCATED),
        (502, "server_error", "The model's upstream server ended the response early; retry the request.", None, "bad_gateway", {}),
    ),
    (
        UpstreamFailed("upstream error event", UpstreamFault.ERROR_EVENT, detail="out of memory"),
        (502, "server_error", "The model's upstream server failed while generating (out of memory); retry the request.", None, "bad_gateway", {}),
    ),
    (
        UpstreamFailed("upstream error event", UpstreamFault.ERROR_EVENT),
        (502, "server_error", "The model's upstream server failed while generating (no details); retry the request.", None, "bad_gateway", {}),
    ),
]


@pytest.mark.parametrize(("error", "expected"), CASES, ids=[f"{type(e).__name__}-{i}" for i, (e, _) in enumerate(CASES)])
def test_each_engine_error_is_told_to_the_client_as_before(error: EngineError, expected: tuple[object, ...]) -> None:
    assert told(client_error(error)) == expected


def test_every_upstream_fault_has_a_client_message() -> None:
    for fault in UpstreamFault:
        error = client_error(UpstreamFailed("x", fault, status=500))
        assert error.status == 502 and error.message.startswith("The ")


def test_an_upstreams_error_event_detail_is_cut_to_300_characters() -> None:
    error = client_error(UpstreamFailed("upstream error event", UpstreamFault.ERROR_EVENT, detail="x" * 1000))
    assert f"({'x' * 300})" in error.message and "x" * 301 not in error.message


def test_what_is_not_an_engine_error_has_no_client_error() -> None:
    assert client_error(ValueError("no")) is None
    assert client_error(GrammarError("The schema is not plain JSON.")) is None  # planning names its param itself
