"""docs/deploy.md, run on loopback: nginx with `examples/nginx-replicas.conf` in front of two
`modelhost serve` replicas sharing a fresh PostgreSQL database and Redis, driven through the
official Python SDK pointed at nginx.

The config under test is the example file itself; only the replicas' ports, the listen address and
the file paths are substituted (each substitution must match exactly once, so the example cannot
drift away from what is tested). Generations are 1–3 tokens, except the one stream that must still
be running when its replica is told to stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from modelhost.store.db import migration_heads
import redis

from serverproc import MODEL, ServerProcess, free_port, private_database
from modelhost.store import UsageLedger, UsageEntry, open_engine, session_factory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "nginx-replicas.conf"
REDIS_URL = "redis://127.0.0.1:6379/0"
KEY_CACHE_SECONDS = 2.0
METRICS_TOKEN = "metrics-" + uuid.uuid4().hex
HI = [{"role": "user", "content": "Hi"}]
NO_EOS = {"2": -100}  # SmolLM2's end of turn: a generation then runs to max_tokens, never shorter


def _find_nginx() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


NGINX = _find_nginx()
pytestmark = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed (Debian: apt-get install nginx; .ci/run installs it), so the load-balancer config cannot be exercised",
)


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A PostgreSQL database of our own, empty (the replicas migrate it), dropped afterwards."""
    with private_database("modelhost_deploy") as url:
        yield url


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    prefix = f"modelhost-deploy-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, database: str, redis_prefix: str) -> Iterator[list[ServerProcess]]:
    """Two replicas started at the same moment on the empty database, as a fleet's first rollout would."""
    env = {
        "MODELHOST_DATABASE_URL": database,
        "MODELHOST_REDIS_URL": REDIS_URL,
        "MODELHOST_REDIS_KEY_PREFIX": redis_prefix,
        "MODELHOST_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS),
        "MODELHOST_LIMITS_CACHE_SECONDS": "0",
        "MODELHOST_METRICS_TOKEN": METRICS_TOKEN,
        "MODELHOST_SHUTDOWN_GRACE_SECONDS": "10",
        "MODELHOST_EMBEDDING_MODEL_ENABLED": "false",
        "MODELHOST_SLOTS": "2",
        "MODELHOST_THREADS": "1",
        "MODELHOST_MAX_UNAUTHENTICATED_PER_ADDRESS": "0",  # as examples/nginx-replicas.conf says: every peer is nginx
    }
    fleet = [ServerProcess(tmp_path_factory.mktemp(f"replica-{n}"), env_overrides=env) for n in (1, 2)]
    try:
        with ThreadPoolExecutor(len(fleet)) as pool:
            for started in [pool.submit(replica.start, 90.0) for replica in fleet]:
                started.result()
        yield fleet  # the rolling-restart test replaces a member; teardown stops whoever is there
    finally:
        for replica in fleet:
            replica.stop()


def render(conf: str, *, replica_ports: list[int], listen: int) -> str:
    """The example config with loopback ports, a foreground master and every path inside nginx's prefix."""
    user = pwd.getpwuid(os.geteuid()).pw_name  # as root, workers must be able to read the private tmp dir
    substitutions = [
        (r"^user \S+;$", f"user {user};"),
        (r"^pid \S+;$", "pid nginx.pid;"),
        (r"^error_log \S+ (\w+);$", r"error_log logs/error.log \1;"),
        (r"^(\s*)access_log \S+ modelhost;$", r"\1access_log logs/access.log modelhost;"),
        (r"^(\s*)listen 8000;$", rf"\1listen 127.0.0.1:{listen};"),
        (r"server 127\.0\.0\.1:8001 ", f"server 127.0.0.1:{replica_ports[0]} "),
        (r"server 127\.0\.0\.1:8002 ", f"server 127.0.0.1:{replica_ports[1]} "),
        (r"^http \{$", "http {\n" + "".join(
            f"    {kind}_temp_path temp/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ).rstrip("\n")),
    ]
    for pattern, replacement in substitutions:
        conf, count = re.subn(pattern, replacement, conf, flags=re.MULTILINE)
        assert count == 1, f"examples/nginx-replicas.conf no longer has exactly one line matching {pattern!r}"
    return "daemon off;\n" + conf


@dataclass
class Balancer:
    port: int
    prefix: Path
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        return (self.prefix / "logs" / "access.log").read_text(errors="replace")

    def output(self) -> str:
        out = (self.prefix / "nginx.out").read_text(errors="replace")
        errors = self.prefix / "logs" / "error.log"
        return out + (errors.read_text(errors="replace") if errors.exists() else "")


@pytest.fixture(scope="module")
def nginx(replicas: list[ServerProcess], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    assert NGINX is not None
    prefix = tmp_path_factory.mktemp("nginx")
    (prefix / "logs").mkdir()
    (prefix / "temp").mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render(EXAMPLE.read_text(), replica_ports=[r.port for r in replicas], listen=port))
    checked = subprocess.run([NGINX, "-t", "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr"], capture_output=True, text=True)
    assert checked.returncode == 0, f"nginx -t refused the rendered example:\n{checked.stderr}"
    with open(prefix / "nginx.out", "wb") as out:
        proc = subprocess.Popen([NGINX, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr"], stdout=out, stderr=subprocess.STDOUT)
    balancer = Balancer(port, prefix, proc)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"nginx exited:\n{balancer.output()}"
            try:
                if httpx.get(f"{balancer.root_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"nginx did not answer /health:\n{balancer.output()}"
            time.sleep(0.1)
        yield balancer
    finally:
        proc.terminate()  # this nginx master only (its workers follow it)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- helpers --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tenant:
    organization: str
    project: str
    key_id: str
    secret: str

    def client(self, balancer: Balancer, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=balancer.base_url, api_key=self.secret, **{"max_retries": 0, **kwargs})  # type: ignore[arg-type]

    def async_client(self, balancer: Balancer) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=balancer.base_url, api_key=self.secret, max_retries=0)


def new_tenant(replica: ServerProcess, name: str) -> Tenant:
    """A project and its key, made with one replica's CLI (so: in the shared PostgreSQL database)."""
    organization = str(replica.cli("orgs", "list")["data"][0]["id"])  # type: ignore[index]
    project = str(replica.cli("projects", "create", name, "--org", organization)["id"])
    key = replica.cli("keys", "create", "--project", project)
    return Tenant(organization, project, str(key["id"]), str(key["secret"]))


def ledger_rows(database: str, project: str) -> list[UsageEntry]:
    engine = open_engine(database)
    try:
        return [e for e in UsageLedger(session_factory(engine)).entries() if e.project_id == project]
    finally:
        engine.dispose()


def served_request_ids(replica: ServerProcess) -> set[str]:
    """Request ids of the generations a replica answered, from its JSON access log."""
    assert replica.log_path is not None
    ids = set()
    for line in replica.log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") == "request" and record.get("route") == "/v1/chat/completions":
            ids.add(str(record["request_id"]))
    return ids


def metric(replica: ServerProcess, name: str, **labels: str) -> float:
    """Sum of one metric's samples with these labels, scraped from the replica itself (not the balancer)."""
    text = httpx.get(f"{replica.root_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
    assert text.status_code == 200
    total = 0.0
    for line in text.text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- tests ----------------------------------------------------------------------------------------
def test_replicas_started_together_migrate_and_bootstrap_one_store(replicas: list[ServerProcess], database: str) -> None:
    first_starts = [r for r in replicas if "First start: created organization" in r.log()]
    assert len(first_starts) == 1, "exactly one replica creates the first organization"
    for replica in replicas:
        organizations = replica.cli("orgs", "list")["data"]
        assert len(organizations) == 1  # type: ignore[arg-type]
    with psycopg.connect(database) as conn:
        heads = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
    assert heads == migration_heads()  # every migration branch at its head, once


def test_the_balancer_serves_health_and_hides_metrics(nginx: Balancer, replicas: list[ServerProcess]) -> None:
    health = httpx.get(f"{nginx.root_url}/health", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    # The details need the metrics token, which nginx does not pass on: liveness only through it.
    token = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert httpx.get(f"{nginx.root_url}/health", headers=token, timeout=5).json() == {"status": "ok"}
    for replica in replicas:
        assert httpx.get(f"{replica.root_url}/health", headers=token, timeout=5).json()["engines"][0]["slots_total"] == 2
    hidden = httpx.get(f"{nginx.root_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
    assert hidden.status_code == 404  # scraped per replica, never through the balancer
    for replica in replicas:
        assert metric(replica, "modelhost_engine_slots_total") == 2


def test_a_key_made_on_one_replica_works_through_the_balancer_on_both_and_the_ledger_has_one_row_per_request(
    nginx: Balancer, replicas: list[ServerProcess], database: str
) -> None:
    a, b = replicas
    tenant = new_tenant(a, "Behind nginx")
    before = [metric(r, "modelhost_generations_total", operation="chat.completions") for r in replicas]
    sent = [f"deploy-{uuid.uuid4().hex[:16]}" for _ in range(8)]

    async def one(client: openai.AsyncOpenAI, request_id: str, stream: bool) -> tuple[str, str]:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HI, max_tokens=2, logit_bias=NO_EOS, stream=stream,
            extra_headers={"X-Request-Id": request_id, "OpenAI-Organization": tenant.organization, "OpenAI-Project": tenant.project},
        )
        echoed = raw.headers["x-request-id"]
        parsed = raw.parse()  # `with_raw_response` is the SDK's legacy wrapper: parse() is not awaited
        if not stream:
            return echoed, parsed.id
        ids = set()
        async for chunk in parsed:
            ids.add(chunk.id)
        assert len(ids) == 1
        return echoed, ids.pop()

    async def fire() -> list[tuple[str, str]]:
        client = tenant.async_client(nginx)
        try:
            pending = []
            for i, request_id in enumerate(sent):  # four at a time: two per replica's two slots
                pending.append(one(client, request_id, stream=i % 2 == 1))
            return list(await asyncio.gather(*pending[:4])) + list(await asyncio.gather(*pending[4:]))
        finally:
            await client.close()

    answers = asyncio.run(fire())
    assert [echoed for echoed, _ in answers] == sent  # X-Request-Id went through nginx and came back
    completion_ids = {completion for _, completion in answers}

    # Both replicas answered, each request exactly one of them (their own access logs, by request id).
    # A stream's access-log line is written as its response ends, which can be just after the
    # client read `[DONE]`: wait a moment for the last line.
    deadline = time.monotonic() + 10
    while True:
        on_a, on_b = (served_request_ids(r) & set(sent) for r in replicas)
        if on_a | on_b == set(sent) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert on_a and on_b, f"requests did not land on both replicas: {len(on_a)} and {len(on_b)} of 8"
    assert on_a | on_b == set(sent) and not on_a & on_b
    after = [metric(r, "modelhost_generations_total", operation="chat.completions") for r in replicas]
    assert after[0] - before[0] == len(on_a) and after[1] - before[1] == len(on_b)
    upstreams = set(re.findall(r"upstream=(127\.0\.0\.1:\d+)", nginx.access_log()))
    assert upstreams == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}

    # One PostgreSQL ledger for the fleet: one row per request, under the tenant's key and project.
    rows = ledger_rows(database, tenant.project)
    assert sorted(r.request_id for r in rows) == sorted(completion_ids) and len(rows) == len(sent)
    assert all(r.api_key_id == tenant.key_id and r.completion_tokens == 2 and r.outcome == "completed" for r in rows)


def test_a_streamed_completion_arrives_intact_through_the_balancer(nginx: Balancer, replicas: list[ServerProcess], database: str) -> None:
    tenant = new_tenant(replicas[1], "Streams")
    client = tenant.client(nginx)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=3, logit_bias=NO_EOS, stream=True, stream_options={"include_usage": True}
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    # The same on the wire: Server-Sent Events, every event whole, and the closing [DONE].
    with httpx.stream(
        "POST", f"{nginx.base_url}/chat/completions", timeout=30,
        headers={"Authorization": f"Bearer {tenant.secret}"},
        json={"model": MODEL, "messages": HI, "max_tokens": 3, "logit_bias": NO_EOS, "stream": True, "seed": 7},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-ratelimit-limit-requests"]  # modelhost's headers pass through
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(e.startswith("data: ") for e in events) and all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert [p["choices"][0]["finish_reason"] for p in payloads][-1] == "length"

    rows = {r.request_id: r for r in ledger_rows(database, tenant.project)}
    assert set(rows) == {chunks[0].id, payloads[0]["id"]}
    assert rows[chunks[0].id].completion_tokens == 3 and rows[chunks[0].id].outcome == "completed"
    assert text  # three tokens of text made it through


def test_a_key_revoked_on_one_replica_is_refused_by_every_replica_within_the_ttl(
    nginx: Balancer, replicas: list[ServerProcess]
) -> None:
    a, b = replicas
    tenant = new_tenant(a, "Revoked")
    direct = [openai.OpenAI(base_url=r.base_url, api_key=tenant.secret, max_retries=0) for r in replicas]
    through = tenant.client(nginx)
    for client in [*direct, through, through]:  # every replica now trusts the key from its cache
        assert [m.id for m in client.models.list()]

    b.cli("keys", "revoke", tenant.key_id)  # on the other replica
    time.sleep(KEY_CACHE_SECONDS + 0.3)  # every cache entry above was made before the revocation
    for client in [*direct, through, through, through, through]:
        with pytest.raises(openai.AuthenticationError) as refused:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
        assert refused.value.status_code == 401


def test_a_project_rate_limit_holds_across_the_balancer(nginx: Balancer, replicas: list[ServerProcess], database: str) -> None:
    a, b = replicas
    tenant = new_tenant(a, "Limited")
    b.cli("limits", "set", "--project", tenant.project, "--rpm", "3")  # one request refills every 20 s
    client = tenant.client(nginx)
    sent = [f"rpm-{uuid.uuid4().hex[:16]}" for _ in range(4)]
    remaining = []
    for request_id in sent[:3]:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HI, max_tokens=1, extra_headers={"X-Request-Id": request_id}
        )
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1, extra_headers={"X-Request-Id": sent[3]})
    assert remaining == ["2", "1", "0"]
    error = limited.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert "Limit 3, Used 3, Requested 1" in error.message
    assert 1 <= int(error.response.headers["retry-after"]) <= 20  # passed through for the SDK to wait on
    served = [served_request_ids(r) & set(sent[:3]) for r in replicas]
    assert all(served), "the three allowed requests were spread over both replicas, counted as one"
    assert len(ledger_rows(database, tenant.project)) == 3  # the refused request ran nowhere


def test_a_rolling_restart_behind_the_balancer_drops_nothing(
    nginx: Balancer, replicas: list[ServerProcess], database: str
) -> None:
    tenant = new_tenant(replicas[0], "Rollout")
    client = tenant.client(nginx)
    # A stream long enough to be running when its replica gets SIGTERM (the one test with more than 3 tokens).
    stream = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=64, logit_bias=NO_EOS, stream=True)
    chunks = [next(stream)]
    busy = [metric(r, "modelhost_http_requests_in_flight") for r in replicas]  # the scrape itself counts 1
    assert sorted(busy) == [1.0, 2.0], busy
    index = busy.index(2.0)
    victim, other = replicas[index], replicas[1 - index]
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _accepts(victim.port):  # uvicorn closes its listening socket within ~0.1 s of the signal
        assert time.monotonic() < deadline, "the draining replica still accepts connections"
        time.sleep(0.05)

    # While it drains, new requests through nginx are answered (by the other replica).
    for _ in range(3):
        assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1).choices
    chunks += list(stream)  # and the running stream finishes on the draining replica
    assert chunks[-1].choices[0].finish_reason == "length"
    assert victim.proc.wait(timeout=30) == 0
    assert "shutting down: 1 requests running" in victim.log()

    # The replica comes back on its port; nginx sends it traffic again once its 5 s fail_timeout ends.
    replacement = ServerProcess(victim.home, env_overrides=victim.env_overrides, port=victim.port).start(90.0)
    replicas[index] = replacement
    time.sleep(5.5)
    sent = [f"back-{uuid.uuid4().hex[:16]}" for _ in range(4)]
    for request_id in sent:
        assert client.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=1, extra_headers={"X-Request-Id": request_id}
        ).choices
    assert served_request_ids(replacement) & set(sent), "the restarted replica got no traffic back"
    assert served_request_ids(other)  # (still serving too)

    rows = ledger_rows(database, tenant.project)
    assert len(rows) == 1 + 3 + 4 and len({r.request_id for r in rows}) == len(rows)
    assert {r.outcome for r in rows} == {"completed"}
    assert [r.completion_tokens for r in rows if r.request_id == chunks[0].id] == [64]
