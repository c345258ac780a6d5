"""H–I. Slow and vanishing clients, saturation, deadlines: nobody can pin the server or a slot."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx

from serverproc import MODEL, ledger_of

from .conftest import (
    Guarded,
    closed_within,
    engine_state,
    long_chat,
    make_key,
    open_request,
    read_head,
    start_server,
    wait_until,
)


def test_H1_a_connection_that_sends_nothing_is_closed(guarded: Guarded) -> None:
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        assert closed_within(sock, 8) < 6  # header deadline 2 s on this server


def test_H1_trickled_headers_are_cut_off_at_the_header_deadline(guarded: Guarded) -> None:
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        try:
            for i in range(20):  # one header line every 0.5 s: each keeps the socket busy, none completes the head
                sock.sendall(f"X-Slow-{i}: y\r\n".encode())
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - started
        assert elapsed < 6, elapsed
        closed_within(sock, 5)


def test_H1_a_trickled_body_is_408_at_the_body_deadline(guarded: Guarded) -> None:
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {guarded.key}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"model": '
        )
        started = time.monotonic()
        status, headers, body = read_head(sock, timeout=10)
        assert status == 408 and 1.5 < time.monotonic() - started < 6
        assert headers.get("connection") == "close"


def test_H1_D2_huge_headers_are_rejected_at_the_http_layer(guarded: Guarded) -> None:
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = read_head(sock)
        assert status in (400, 431), body
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        many = b"".join(f"X-H{i}: v\r\n".encode() for i in range(20_000))
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, _ = read_head(sock)
        assert status in (400, 431)


def test_H2_saturation_is_503_with_retry_after_while_health_and_fast_requests_answer(guarded: Guarded) -> None:
    proc = guarded.proc
    held: list[socket.socket] = []
    try:
        # Both slots (n=2), then the one queue place; the next generation has nowhere to go.
        held.append(open_request(proc.port, long_chat(1500, stream=True, n=2), guarded.key))
        wait_until(lambda: engine_state(proc)["slots_busy"] == 2, 30)
        held.append(open_request(proc.port, long_chat(1500, stream=True), guarded.key))
        wait_until(lambda: engine_state(proc)["queue_depth"] == 1, 30)
        refused = httpx.post(f"{proc.base_url}/chat/completions", json=long_chat(5, stream=False), headers=guarded.auth, timeout=30)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        slowest = 0.0
        for _ in range(10):
            started = time.monotonic()
            assert httpx.get(f"{proc.root_url}/health", timeout=5).status_code == 200
            assert httpx.get(f"{proc.base_url}/models", headers=guarded.auth, timeout=5).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, slowest
        metrics = httpx.get(f"{proc.root_url}/metrics", headers={"Authorization": "Bearer metrics-token-for-tests-0123456789"}).text
        assert 'modelhost_rejections_total{reason="overloaded"}' in metrics
        assert f'modelhost_engine_slots_busy{{model="{MODEL}"}} 2.0' in metrics
        assert f'modelhost_engine_queue_depth{{model="{MODEL}"}} 1.0' in metrics
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: engine_state(proc)["slots_busy"] == 0 and engine_state(proc)["queue_depth"] == 0, 30)


def test_H3_a_client_that_stops_reading_a_stream_loses_it_and_frees_the_slot(guarded: Guarded) -> None:
    proc = guarded.proc
    max_tokens = 1900
    # 20 alternatives per token make each chunk ~2 KB, so the buffers fill in seconds.
    body = long_chat(max_tokens, stream=True, logprobs=True, top_logprobs=20, user="h3-stops-reading")
    sock = open_request(proc.port, body, guarded.key, rcvbuf=4096)
    try:
        wait_until(lambda: engine_state(proc)["slots_busy"] == 1, 30)
        started = time.monotonic()
        # Nothing is read. Buffers fill, the send stalls, and 2 s later the server drops the client.
        wait_until(lambda: engine_state(proc)["slots_busy"] == 0, 60)
        freed_after = time.monotonic() - started
    finally:
        sock.close()
    ledger = ledger_of(proc)
    row = wait_until(lambda: [e for e in ledger.entries() if e.outcome == "cancelled" and e.completion_tokens > 0], 10)[-1]
    assert row.completion_tokens < max_tokens, (row, freed_after)


def test_H_request_deadline_cuts_streams_with_an_error_event_and_plain_requests_with_504(tmp_path: Path) -> None:
    proc = start_server(tmp_path / "deadline", MODELHOST_REQUEST_TIMEOUT_SECONDS="3")
    try:
        auth = {"Authorization": f"Bearer {make_key(proc)['secret']}"}
        started = time.monotonic()
        with httpx.stream("POST", f"{proc.base_url}/chat/completions", json=long_chat(1900, stream=True), headers=auth, timeout=30) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert 2.5 < time.monotonic() - started < 10
        assert "[DONE]" not in events[-1]
        assert json.loads(events[-1][6:])["error"]["code"] == "timeout"
        plain = httpx.post(f"{proc.base_url}/chat/completions", json=long_chat(1900, stream=False), headers=auth, timeout=30)
        assert plain.status_code == 504 and plain.headers["x-should-retry"] == "false"
        assert plain.json()["error"]["code"] == "timeout"
        rows = wait_until(lambda: [e for e in ledger_of(proc).entries()] if len(ledger_of(proc).entries()) >= 2 else None, 10)
        assert [r.outcome for r in rows] == ["cancelled", "cancelled"]
        assert all(0 < r.completion_tokens < 1900 for r in rows)
        # The engine frees a cancelled request's slot at its next step, just after the ledger row.
        assert wait_until(lambda: engine_state(proc)["slots_busy"] == 0, 5)
    finally:
        proc.stop()


def test_D1_chunked_body_over_the_limit_is_413_before_it_is_buffered(guarded: Guarded) -> None:
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {guarded.key}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        piece = b"a" * (64 * 1024)
        try:
            for _ in range(24):  # 1.5 MiB against a 1 MiB limit, and the body never ends (no final chunk)
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending: what D1 asks for
        started = time.monotonic()
        status, headers, body = read_head(sock, timeout=10)
        # 413 while the body is still open: had the server waited for the end, it would answer 408 after 2 s.
        assert status == 413, body
        assert time.monotonic() - started < 1.5
        assert headers.get("connection") == "close"
