"""Issue #12 item 6 (checklist Z, second half): one key cannot make every other tenant's requests fail.

The engine's queue is shared out: an organization holds at most a quarter of it, a project half
of its organization's share (the defaults), and admission goes round robin between organizations,
then projects. A real server with one slot and a queue of 8 (shares: 2 per organization, 1 per
project): organization A floods from one project until refused, then from a second project until
its organization's share is spent; organization B's request is still admitted and served first.
A key's concurrent requests are capped by default too.

Upstream and vLLM models queue elsewhere: the upstream runs one batch and queues the rest first
come, first served, so a flood forwarded whole would make every other tenant wait behind it
without a single 503. A vLLM-like upstream (`tests/support/misbehaving_upstream.py`, ``batch``:
64 running at once, modelhost's default per replica) behind a models file with no sharing settings
at all: organization A floods it, and organization B's request still starts upstream at once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelhost.config import Settings
from serverproc import MODEL, ServerProcess
from support.misbehaving_upstream import MisbehavingUpstream
from support.proxy import openai_model, proxy

from .conftest import engine_state, long_chat, make_key, open_request, read_head, start_server, wait_until


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("fair"), MODELHOST_SLOTS="1", MODELHOST_MAX_QUEUED="8")
    yield proc
    proc.stop()


def stream_from(proc: ServerProcess, key: str, held: list[socket.socket]) -> int:
    """Open a long streamed chat with `key`; the status it got (the socket is kept while it is 200)."""
    sock = open_request(proc.port, long_chat(1500, stream=True), key)
    status, _, body = read_head(sock)
    if status == 200:
        held.append(sock)
    else:
        assert b'"overloaded"' in body or status == 503, body
        sock.close()
    return status


def test_R2_6_one_organization_cannot_fill_the_queue_for_everyone(small: ServerProcess) -> None:
    proc = small
    a1 = make_key(proc, "--name", "flood-1")["secret"]
    organization = make_key(proc, "--name", "probe")["organization"]
    a2 = make_key(proc, "--project", str(proc.cli("projects", "create", "Flood two", "--org", organization)["id"]))["secret"]
    a3 = make_key(proc, "--project", str(proc.cli("projects", "create", "Flood three", "--org", organization)["id"]))["secret"]
    other = str(proc.cli("orgs", "create", "Elsewhere")["id"])
    b = make_key(proc, "--org", other, "--name", "victim")["secret"]
    held: list[socket.socket] = []
    try:
        assert stream_from(proc, a1, held) == 200  # runs in the one slot
        wait_until(lambda: engine_state(proc)["slots_busy"] == 1, 30)
        assert stream_from(proc, a1, held) == 200  # waits: project 1's one place
        assert stream_from(proc, a1, held) == 503  # project 1's share is spent
        assert stream_from(proc, a2, held) == 200  # another project of A still finds a place
        assert stream_from(proc, a3, held) == 503  # A's share (2 of 8) is spent, whatever the project
        assert engine_state(proc)["queue_depth"] == 2

        answer: list[httpx.Response] = []
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        victim = threading.Thread(
            target=lambda: answer.append(
                httpx.post(f"{proc.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {b}"}, timeout=120)
            )
        )
        victim.start()
        wait_until(lambda: engine_state(proc)["queue_depth"] == 3, 30)  # B waits instead of getting a 503
        held.pop(0).close()  # A's running stream ends; B goes next, before A's waiting requests
        victim.join(120)
        assert answer and answer[0].status_code == 200, answer[0].text if answer else "no answer"
        assert answer[0].json()["usage"]["completion_tokens"] >= 1
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: engine_state(proc)["slots_busy"] == 0 and engine_state(proc)["queue_depth"] == 0, 60)


def test_R2_6_a_key_has_a_concurrency_cap_by_default(tmp_path: Path) -> None:
    """64 requests of one key at once (running or waiting), by default; the 65th is a 429."""
    assert Settings(home=tmp_path).rate_limit_concurrent_requests_per_key == 64
    proc = start_server(tmp_path / "home", MODELHOST_SLOTS="1", MODELHOST_MAX_QUEUED="1024")  # shares: 256, 128
    held: list[socket.socket] = []
    try:
        key = make_key(proc, "--name", "busy")["secret"]
        for _ in range(64):
            assert stream_from(proc, key, held) == 200
        sock = open_request(proc.port, long_chat(5, stream=True), key)
        status, headers, body = read_head(sock)
        while len(body) < int(headers.get("content-length", 0)):
            body += sock.recv(65536)
        sock.close()
        assert status == 429 and b"concurrent requests per key: Limit 64" in body, body
        assert stream_from(proc, make_key(proc, "--name", "calm")["secret"], held) == 200  # another key of the project
    finally:
        for sock in held:
            sock.close()
        proc.stop()


# -- upstream and vLLM models: what is forwarded -------------------------------------------------

BATCH = 64  # the upstream runs this many at once, like `vllm serve --max-num-seqs 64`


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MisbehavingUpstream, ServerProcess]]:
    with MisbehavingUpstream() as up:
        up.batch_size = BATCH
        server = proxy(tmp_path_factory.mktemp("r2-batched"), openai_model("batched", [up.base_url], "batch", health_interval_seconds=0))
        try:
            yield up, server
        finally:
            server.stop()


def _chat(content: str) -> dict[str, object]:
    return {"model": "batched", "messages": [{"role": "user", "content": content}], "max_tokens": 5, "stream": True}


def _settled(up: MisbehavingUpstream, quiet: float = 1.0, timeout: float = 60.0) -> int:
    """How many requests the upstream started, once no more have started for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = len(up.batch_started), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the upstream kept starting requests"
        time.sleep(0.1)
        if len(up.batch_started) != seen:
            seen, since = len(up.batch_started), time.monotonic()
    return seen


def test_R2_6_a_flooding_organization_cannot_hold_back_anothers_request_upstream(
    batched: tuple[MisbehavingUpstream, ServerProcess],
) -> None:
    up, proc = batched
    first = make_key(proc, "--name", "flood-0")
    organization = first["organization"]
    flood = [first["secret"]] + [
        make_key(proc, "--project", str(proc.cli("projects", "create", f"Flood {i}", "--org", organization)["id"]))["secret"]
        for i in (1, 2)
    ]
    victim = make_key(proc, "--org", str(proc.cli("orgs", "create", "Elsewhere")["id"]), "--name", "victim")["secret"]
    held: list[socket.socket] = []
    try:
        for key in flood:  # 90 long streams from organization A: more than the upstream's whole batch
            held.extend(open_request(proc.port, _chat("flood"), key) for _ in range(30))
        _settled(up)

        started = time.monotonic()
        sock = open_request(proc.port, _chat("victim"), victim)
        held.append(sock)
        try:
            status, _, body = read_head(sock, timeout=5)
        except TimeoutError:
            raise AssertionError("B's request has not started in 5 s: it waits behind A's flood") from None
        assert status == 200, body
        while b"tick" not in body:  # the role chunk first, then the upstream's text
            body += sock.recv(65536)
        took = time.monotonic() - started
        assert "victim" in up.batch_started and took < 3.0, f"B's request started upstream after {took:.1f} s"

        # A was forwarded half of the upstream's batch; the rest of its flood waits in modelhost, not upstream.
        assert up.batch_started.count("flood") == BATCH // 2
        assert engine_state(proc)["queue_depth"] == 90 - BATCH // 2
        assert engine_state(proc)["slots_total"] == BATCH  # forwarded at most: 64 per replica by default
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: engine_state(proc)["queue_depth"] == 0 and engine_state(proc)["slots_busy"] == 0, 30)
