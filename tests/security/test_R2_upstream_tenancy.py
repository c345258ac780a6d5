"""R2-5 and R2-13: what an OpenAI-compatible upstream may tell one tenant about another, and what it
may leak of modelhost's own key.

A real `modelhost serve` forwards to a vLLM-like upstream on loopback
(`tests/support/misbehaving_upstream.py`, behaviour ``prefix-cache``: a prompt seen before with the
same ``cache_salt`` comes back with all its tokens cached). Two organizations send the same prompt
through the official SDK: organization B must never be told of a prefix organization A left
upstream, while A's own prefix is still reused. Then an upstream that repeats modelhost's upstream
key in its 400 (``echo-key``): the client's error and the server's log carry no part of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from serverproc import ServerProcess
from support.misbehaving_upstream import MisbehavingUpstream
from support.proxy import openai_model, proxy

UPSTREAM_KEY = "sk-upstream-r2-c0ffee-0123456789abcdefXYZ"
SECRET = "r2-cache-salt-secret-0123456789abcdef"
PROMPT = [{"role": "user", "content": "The quarterly numbers of Acme Corp are confidential."}]


@dataclass(frozen=True)
class Tenant:
    organization: str
    client: openai.OpenAI


@pytest.fixture(scope="module")
def up() -> Iterator[MisbehavingUpstream]:
    with MisbehavingUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, up: MisbehavingUpstream) -> Iterator[ServerProcess]:
    models = (
        openai_model("salted", [up.base_url], "prefix-cache", key=True, health_interval_seconds=0, cache_salt=True)
        + openai_model("unsalted", [up.base_url], "prefix-cache", key=True, health_interval_seconds=0)
        + openai_model("echoing", [up.base_url], "echo-key", key=True, health_interval_seconds=0)
    )
    server = proxy(
        tmp_path_factory.mktemp("r2-upstream"), models, upstream_key=UPSTREAM_KEY, env={"MODELHOST_CACHE_SALT_SECRET": SECRET}
    )
    yield server
    server.stop()


def tenant(front: ServerProcess, name: str | None) -> Tenant:
    if name is None:
        key = front.cli("keys", "create", "--name", "r2-a")
    else:
        org = front.cli("orgs", "create", name)
        key = front.cli("keys", "create", "--org", str(org["id"]), "--name", "r2-b")
    client = openai.OpenAI(base_url=front.base_url, api_key=str(key["secret"]), max_retries=0)
    return Tenant(str(key["organization"]), client)


@pytest.fixture(scope="module")
def tenants(front: ServerProcess) -> tuple[Tenant, Tenant]:
    a, b = tenant(front, None), tenant(front, "OrgB")
    assert a.organization != b.organization
    return a, b


def cached(who: Tenant, model: str, *, stream: bool = False) -> int:
    if stream:
        chunks = list(who.client.chat.completions.create(
            model=model, messages=PROMPT, max_tokens=2, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        ))
        usage = chunks[-1].usage
    else:
        usage = who.client.chat.completions.create(model=model, messages=PROMPT, max_tokens=2).usage  # type: ignore[arg-type]
    assert usage is not None and usage.prompt_tokens_details is not None
    return int(usage.prompt_tokens_details.cached_tokens or 0)


def test_R2_5_a_salted_upstream_never_tells_one_organization_of_anothers_prefix(
    up: MisbehavingUpstream, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    up.prefix_cache.clear()
    assert cached(a, "salted") == 0  # A's prompt enters the upstream's cache
    assert cached(b, "salted") == 0  # B sends the same prompt: no hit, because B's salt differs
    assert cached(b, "salted", stream=True) == 11  # ... but B reuses its own prefix
    assert cached(a, "salted", stream=True) == 11  # ... and so does A
    salts = {body["cache_salt"] for body in up.bodies[-4:]}
    assert len(salts) == 2  # one salt per organization, stable across its requests
    for salt in salts:  # derived with the server's secret, not readable or guessable from the org id
        assert isinstance(salt, str) and len(salt) >= 32
        assert a.organization not in salt and b.organization not in salt and SECRET not in salt


def test_R2_5_an_unsalted_upstreams_cached_tokens_are_reported_as_zero(
    up: MisbehavingUpstream, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    up.prefix_cache.clear()
    assert cached(a, "unsalted") == 0
    # The upstream's shared cache hits A's prefix for B (it reports 11): modelhost must not pass that on.
    assert cached(b, "unsalted") == 0 and cached(b, "unsalted", stream=True) == 0
    assert all("cache_salt" not in body for body in up.bodies[-3:])


def test_R2_5_a_client_cannot_choose_its_own_cache_salt(up: MisbehavingUpstream, tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    up.prefix_cache.clear()
    cached(a, "salted")
    # B sends A's salt (as a tenant could if salts were guessable or client-set): it is not forwarded.
    response = b.client.chat.completions.create(
        model="salted", messages=PROMPT, max_tokens=2, extra_body={"cache_salt": up.bodies[-1]["cache_salt"]}  # type: ignore[arg-type]
    )
    assert response.usage is not None and response.usage.prompt_tokens_details is not None
    assert response.usage.prompt_tokens_details.cached_tokens == 0
    assert up.bodies[-1]["cache_salt"] != up.bodies[-2]["cache_salt"]


def test_R2_13_an_upstream_error_repeating_our_key_reaches_neither_client_nor_log(
    front: ServerProcess, tenants: tuple[Tenant, Tenant]
) -> None:
    a, _ = tenants
    with pytest.raises(openai.BadRequestError) as caught:
        a.client.chat.completions.create(model="echoing", messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
    error = caught.value.body
    assert isinstance(error, dict) and "invalid 'temperature'" in error["message"]
    assert error["param"] is None and error["code"] is None  # the upstream put the key there
    text = caught.value.response.text + front.log()
    for piece in (UPSTREAM_KEY, UPSTREAM_KEY[:12], UPSTREAM_KEY[3:20], "c0ffee-0123456789"):
        assert piece not in text, piece
