"""Rate limits and quotas through the official SDK against a real server (bundled model, in-process counters)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from serverproc import MODEL, ServerProcess, ledger_of, wait_for_entry

HI = [{"role": "user", "content": "Hi"}]
ONE_TOKEN = {"max_tokens": 1, "logit_bias": {"2": -100}}  # exactly one completion token, never end-of-turn


@dataclass(frozen=True)
class Tenant:
    organization: str
    project: str
    secret: str

    def client(self, server: ServerProcess, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.base_url, api_key=self.secret, **{"max_retries": 0, **kwargs})  # type: ignore[arg-type]

    def async_client(self, server: ServerProcess, **kwargs: object) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=server.base_url, api_key=self.secret, **{"max_retries": 0, **kwargs})  # type: ignore[arg-type]


def new_tenant(server: ServerProcess, name: str) -> Tenant:
    organization = str(server.cli("orgs", "list")["data"][0]["id"])  # type: ignore[index]
    project = str(server.cli("projects", "create", name, "--org", organization)["id"])
    key = server.cli("keys", "create", "--project", project)
    return Tenant(organization, project, str(key["secret"]))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Limits are read from the store on every request, so a `modelhost limits set` applies at once.
    proc = ServerProcess(
        tmp_path_factory.mktemp("limits-home"),
        env_overrides={"MODELHOST_LIMITS_CACHE_SECONDS": "0", "MODELHOST_SLOTS": "4"},
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def prompt_tokens(server: ServerProcess) -> int:
    """How many tokens the HI prompt is (the quota tests size budgets with it)."""
    tenant = new_tenant(server, "Sizing")
    return tenant.client(server).chat.completions.create(model=MODEL, messages=HI, **ONE_TOKEN).usage.prompt_tokens  # type: ignore[union-attr]


def test_every_generation_response_carries_rate_limit_headers(server: ServerProcess) -> None:
    tenant = new_tenant(server, "Headers")
    server.cli("limits", "set", "--project", tenant.project, "--rpm", "30", "--tpm", "40000")
    client = tenant.client(server)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=2)
    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "30"
    assert headers["x-ratelimit-remaining-requests"] == "29"
    assert headers["x-ratelimit-limit-tokens"] == "40000"
    usage = raw.parse().usage
    assert int(headers["x-ratelimit-remaining-tokens"]) == 40000 - usage.prompt_tokens - 2  # the estimate
    assert headers["x-ratelimit-reset-requests"].endswith("s")  # "2s", "1.987s"
    assert headers["x-ratelimit-reset-tokens"].endswith("s")

    stream = client.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=2, stream=True)
    assert stream.headers["x-ratelimit-limit-requests"] == "30"
    assert int(stream.headers["x-ratelimit-remaining-requests"]) in (28, 29)  # one refills every 2 s
    assert "x-ratelimit-reset-tokens" in stream.headers
    assert [chunk for chunk in stream.parse()]

    legacy = client.completions.with_raw_response.create(model=MODEL, prompt="Hello", max_tokens=1)
    assert legacy.headers["x-ratelimit-limit-tokens"] == "40000"


def test_over_the_rate_limit_is_429_and_the_sdk_recovers_after_the_reset(server: ServerProcess) -> None:
    tenant = new_tenant(server, "Rate")
    server.cli("limits", "set", "--project", tenant.project, "--model", MODEL, "--rpm", "12")  # one per 5 s
    client = tenant.client(server)
    refused: openai.RateLimitError | None = None
    for _ in range(20):
        try:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None, "12 requests per minute were not enforced"
    body = refused.body
    assert isinstance(body, dict)
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    assert body["message"].startswith(
        f"Rate limit reached for {MODEL} in organization {tenant.organization} on requests per min (RPM): Limit 12, Used 12, Requested 1."
    )
    headers = refused.response.headers
    assert 1 <= int(headers["retry-after"]) <= 5
    assert headers["x-ratelimit-remaining-requests"] == "0"

    # The SDK waits Retry-After (it honours up to 120 s) and its retry succeeds.
    started = time.monotonic()
    patient = tenant.client(server, max_retries=2)
    assert patient.chat.completions.create(model=MODEL, messages=HI, max_tokens=1).choices
    assert time.monotonic() - started >= int(headers["retry-after"]) - 1.5


def test_concurrent_requests_per_key_are_capped(server: ServerProcess) -> None:
    tenant = new_tenant(server, "Concurrency")
    server.cli("limits", "set", "--project", tenant.project, "--concurrency", "1")
    client = tenant.client(server)
    body = {"model": MODEL, "messages": HI, "max_tokens": 400, "logit_bias": {"2": -100}, "stream": True}
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body,
        headers={"Authorization": f"Bearer {tenant.secret}"}, timeout=60,
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the first is running
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
        assert "concurrent requests per key: Limit 1" in refused.value.message
    # The stream's end (here: the client leaving) frees its slot.
    deadline = time.monotonic() + 10
    while True:
        try:
            assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1).choices
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the disconnected stream never released its concurrency slot"
            time.sleep(0.2)


def test_a_completion_with_several_prompts_is_one_request(server: ServerProcess) -> None:
    # OpenAI counts the HTTP request: three prompts take one request from RPM and one concurrency
    # place (a cap of 1 must not refuse the request's own second prompt), and tokens for all three.
    tenant = new_tenant(server, "Prompts")
    server.cli("limits", "set", "--project", tenant.project, "--rpm", "30", "--tpm", "600", "--concurrency", "1")
    raw = tenant.client(server).completions.with_raw_response.create(
        model=MODEL, prompt=["One", "Two", "Three"], max_tokens=1, logit_bias={"0": -100}
    )
    completion = raw.parse()
    assert len(completion.choices) == 3
    assert raw.headers["x-ratelimit-remaining-requests"] == "29"
    taken = completion.usage.prompt_tokens + 3  # type: ignore[union-attr]
    # The bucket refills 10 tokens/s while the three prompts reserve one after the other.
    assert 600 - taken <= int(raw.headers["x-ratelimit-remaining-tokens"]) <= 600 - taken + 1


def test_insufficient_quota_is_429_and_the_sdk_does_not_retry(server: ServerProcess) -> None:
    tenant = new_tenant(server, "Broke")
    server.cli("quotas", "set", "--project", tenant.project, "--unit", "tokens", "--hard", "5")
    sent: list[str] = []
    client = tenant.client(
        server,
        max_retries=2,
        http_client=openai.DefaultHttpxClient(event_hooks={"request": [lambda request: sent.append(str(request.url))]}),
    )
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    assert len(sent) == 1, "the SDK retried a request whose quota is spent"
    error = refused.value
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"
    assert "You exceeded your current quota" in error.message
    assert f"project {tenant.project}" in error.message


def test_fifty_simultaneous_requests_against_a_one_request_budget(server: ServerProcess, prompt_tokens: int) -> None:
    tenant = new_tenant(server, "One request")
    server.cli("quotas", "set", "--project", tenant.project, "--hard", str(prompt_tokens + 1))

    async def fire() -> list[object]:
        client = tenant.async_client(server, max_retries=2)
        try:
            return await asyncio.gather(
                *(client.chat.completions.create(model=MODEL, messages=HI, **ONE_TOKEN) for _ in range(50)),
                return_exceptions=True,
            )
        finally:
            await client.close()

    results = asyncio.run(fire())
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(done) == 1, [type(r).__name__ for r in results]
    assert len(refused) == 49 and all(r.code == "insufficient_quota" for r in refused)
    rows = [e for e in ledger_of(server).entries() if e.project_id == tenant.project]
    assert len(rows) == 1 and rows[0].prompt_tokens + rows[0].completion_tokens == prompt_tokens + 1
    shown = server.cli("quotas", "show", "--project", tenant.project)["data"][0]  # type: ignore[index]
    assert shown["used"] == prompt_tokens + 1 and shown["hard_limit_reached"] is True


def test_a_disconnect_settles_the_quota_to_what_was_generated_exactly_once(server: ServerProcess, prompt_tokens: int) -> None:
    tenant = new_tenant(server, "Disconnect")
    server.cli("quotas", "set", "--project", tenant.project, "--hard", "100000")
    body = {"model": MODEL, "messages": HI, "max_tokens": 1500, "logit_bias": {"2": -100}, "stream": True}
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body,
        headers={"Authorization": f"Bearer {tenant.secret}"}, timeout=60,
    ) as response:
        data = (line for line in response.iter_lines() if line.startswith("data: "))
        request_id = json.loads(next(data)[6:])["id"]
        for _ in range(5):
            next(data)
    entry = wait_for_entry(server, request_id)
    assert entry.outcome == "cancelled" and 5 <= entry.completion_tokens < 1500
    spent = entry.prompt_tokens + entry.completion_tokens
    # If the counter now holds exactly `spent` (not the 1500-token estimate, and not refunded
    # twice), a budget of spent + one request admits exactly one more request.
    server.cli("quotas", "set", "--project", tenant.project, "--hard", str(spent + prompt_tokens + 1))
    client = tenant.client(server)
    assert client.chat.completions.create(model=MODEL, messages=HI, **ONE_TOKEN).usage.completion_tokens == 1  # type: ignore[union-attr]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=HI, **ONE_TOKEN)
    assert refused.value.code == "insufficient_quota"


def test_admin_api_lists_and_modifies_project_rate_limits(server: ServerProcess) -> None:
    from support.openapi_spec import validate

    tenant = new_tenant(server, "Admin limits")
    admin = str(server.cli("keys", "create", "--kind", "admin", "--org", tenant.organization)["secret"])
    url = f"{server.base_url}/organization/projects/{tenant.project}/rate_limits"
    headers = {"Authorization": f"Bearer {admin}"}

    listed = httpx.get(url, headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    validate("ProjectRateLimitListResponse", listed.json())
    mine = [item for item in listed.json()["data"] if item["model"] == MODEL]
    assert [item["id"] for item in mine] == [f"rl-{MODEL}"]
    assert mine[0]["max_requests_per_1_minute"] == 10_000  # the server's default

    changed = httpx.post(f"{url}/rl-{MODEL}", headers=headers, json={"max_requests_per_1_minute": 2}, timeout=10)
    assert changed.status_code == 200, changed.text
    validate("ProjectRateLimit", changed.json())
    assert changed.json()["max_requests_per_1_minute"] == 2
    # …and it is enforced.
    client = tenant.client(server)
    client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    shown = server.cli("limits", "show", "--project", tenant.project)["effective"]
    assert [e["max_requests_per_1_minute"] for e in shown if e["model"] == MODEL] == [2]  # type: ignore[index]
    events = httpx.get(f"{server.base_url}/organization/audit_logs", headers=headers, params={"event_types[]": "rate_limits.updated"}, timeout=10)
    assert events.status_code == 200, events.text
    ours = [e for e in events.json()["data"] if e.get("project", {}).get("id") == tenant.project]
    assert [e["rate_limits.updated"] for e in ours] == [
        {"id": f"rl-{MODEL}", "changes_requested": {"max_requests_per_1_minute": 2}}
    ]

    assert httpx.post(f"{url}/rl-nope", headers=headers, json={"max_requests_per_1_minute": 2}, timeout=10).status_code == 404
    bad = httpx.post(f"{url}/rl-{MODEL}", headers=headers, json={"max_requests_per_1_minute": -1}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_requests_per_1_minute"
    other_org = str(server.cli("orgs", "create", "Elsewhere")["id"])
    other_admin = str(server.cli("keys", "create", "--kind", "admin", "--org", other_org)["secret"])
    hidden = httpx.get(url, headers={"Authorization": f"Bearer {other_admin}"}, timeout=10)
    assert hidden.status_code == 404  # another organization's project: the same answer as none
    inference = httpx.get(url, headers={"Authorization": f"Bearer {tenant.secret}"}, timeout=10)
    assert inference.status_code in (401, 403)
