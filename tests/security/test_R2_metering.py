"""R2-7 (issue #12): the work before a request runs is metered.

Rendering the chat template, tokenizing and compiling a schema happen before the engine, and a
request can fail there (context length, a schema, a template). Such requests used to be refused
before the rate limiter saw them, so a tenant could make the server do that work without limit.
Now a request is counted (its request from the RPM and RPD buckets, its key's concurrency slot)
as soon as its model is known, before any of that work: requests that fail their planning use up
the RPM, and one over the RPM is a 429 before anything is planned. A request that runs is still
counted once, a legacy completion with several prompts included.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from serverproc import EMBEDDING_MODEL, MODEL, ServerProcess

HI = [{"role": "user", "content": "Hi"}]
OVER_CONTEXT = "word " * 5000  # ~5000 tokens: more than the 2048-token context, found out by tokenizing it
BAD_SCHEMA = {  # refused by the schema bounds (issue #12, item 1), after the request was admitted
    "type": "json_schema",
    "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^x{0,200000000}$"}},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("r2-7"), env_overrides={"MODELHOST_LIMITS_CACHE_SECONDS": "0"}).start()
    yield proc
    proc.stop()


@dataclass(frozen=True)
class Tenant:
    organization: str
    client: openai.OpenAI


def tenant(server: ServerProcess, name: str, rpm: int) -> Tenant:
    """A project of its own with `rpm` requests per minute for each model, and a key for it."""
    organization = str(server.cli("orgs", "list")["data"][0]["id"])  # type: ignore[index]
    project = str(server.cli("projects", "create", name, "--org", organization)["id"])
    server.cli("limits", "set", "--project", project, "--rpm", str(rpm))
    secret = str(server.cli("keys", "create", "--project", project)["secret"])
    return Tenant(organization, openai.OpenAI(base_url=server.base_url, api_key=secret, max_retries=0))


def _bad_request(call) -> openai.BadRequestError:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.BadRequestError) as refused:
        call()
    return refused.value


def _rate_limited(tenant: Tenant, model: str, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.RateLimitError) as refused:
        call()
    body = refused.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["type"]) == ("rate_limit_exceeded", "requests"), body
    assert body["message"].startswith(
        f"Rate limit reached for {model} in organization {tenant.organization} on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1."
    ), body["message"]
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_requests_refused_while_planned_use_up_the_rpm(server: ServerProcess) -> None:
    t = tenant(server, "Planning refused", rpm=3)
    chat, legacy = t.client.chat.completions, t.client.completions

    too_long = _bad_request(lambda: chat.create(model=MODEL, messages=[{"role": "user", "content": OVER_CONTEXT}], max_tokens=1))
    assert too_long.code == "context_length_exceeded"
    bad_schema = _bad_request(lambda: chat.create(model=MODEL, messages=HI, max_tokens=1, response_format=BAD_SCHEMA))  # type: ignore[arg-type]
    assert bad_schema.body["param"] == "response_format"  # type: ignore[index]
    too_long = _bad_request(lambda: legacy.create(model=MODEL, prompt=OVER_CONTEXT, max_tokens=1))
    assert too_long.code == "context_length_exceeded"

    # Three planned (and refused) requests used the three: a valid one is over the limit now...
    _rate_limited(t, MODEL, lambda: chat.create(model=MODEL, messages=HI, max_tokens=1))
    # ...and so is one that would fail its planning: the 429 comes before any planning work.
    _rate_limited(t, MODEL, lambda: legacy.create(model=MODEL, prompt=OVER_CONTEXT, max_tokens=1))


def test_embedding_inputs_refused_after_tokenizing_use_up_the_rpm(server: ServerProcess) -> None:
    t = tenant(server, "Embeddings refused", rpm=3)
    for _ in range(3):
        refused = _bad_request(lambda: t.client.embeddings.create(model=EMBEDDING_MODEL, input="word " * 300))
        assert refused.code == "context_length_exceeded"
    _rate_limited(t, EMBEDDING_MODEL, lambda: t.client.embeddings.create(model=EMBEDDING_MODEL, input="Hi"))


def test_a_request_that_runs_counts_once(server: ServerProcess) -> None:
    t = tenant(server, "Counted once", rpm=3)
    legacy = t.client.completions.with_raw_response.create(model=MODEL, prompt=["Hi", "Hello"], max_tokens=1)
    assert legacy.headers["x-ratelimit-remaining-requests"] == "2"  # two prompts, one request
    chat = t.client.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=1)
    assert chat.headers["x-ratelimit-remaining-requests"] == "1"
    assert t.client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input="Hi").headers[
        "x-ratelimit-remaining-requests"
    ] == "2"  # a bucket per model


def test_a_model_the_caller_cannot_use_is_a_404_that_counts_nothing(server: ServerProcess) -> None:
    """Buckets are per model, so the model is resolved (cheaply) before the request is counted."""
    t = tenant(server, "Unknown model", rpm=3)
    for _ in range(4):
        with pytest.raises(openai.NotFoundError):
            t.client.chat.completions.create(model="no-such-model", messages=HI, max_tokens=1)
    ok = t.client.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=1)
    assert ok.headers["x-ratelimit-remaining-requests"] == "2"
