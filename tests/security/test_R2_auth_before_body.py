"""R2-3 (issue 12): the key is checked from the headers before the body is read, and a client can
hold only so many connections that did not authenticate, all clients together at most half of
the server's connections.

An unauthenticated client used to make the server wait for, buffer and ``json.loads`` a body of up
to `MAX_BODY_BYTES` (trickled for `BODY_TIMEOUT_SECONDS`) before its 401. Now the 401 comes as soon
as the head is in: these tests declare bodies they never send (or send one chunk of an endless
chunked body) and get the 401 at once, where waiting for the body would be a 408 after the 2 s body
deadline of the `guarded` server. Authenticated clients keep their 413 and 408
(`test_H_slow_clients.py`).

The caps on unauthenticated connections are tested on a server of their own (`capped`): 4 per
client, 12 (half of its 24 connections) for all clients together. Clients on other addresses are
127.0.0.x, all loopback; grouping IPv6 clients by /64 is tested in
`tests/api/test_unauthenticated_connections.py`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from serverproc import MODEL, ServerProcess

from .conftest import Guarded, closed_within, make_key, read_head, start_server, wait_until

WRONG_KEY = "sk-proj-0-" + "x" * 43  # well formed, stored nowhere: the store is asked and says no
ROUTES = ["/v1/chat/completions", "/v1/organization/projects"]  # an inference and an admin route that take bodies


def _read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One whole response with a Content-Length body."""
    status, headers, body = read_head(sock, timeout)
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _head(path: str, framing: str, authorization: str | None = f"Bearer {WRONG_KEY}") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", framing]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _is_open(sock: socket.socket, wait: float = 0.4) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) != b""
    except (socket.timeout, TimeoutError):
        return True
    except ConnectionResetError:
        return False


def _the_envelope_of_a_whole_request(guarded: Guarded, path: str, authorization: str | None) -> dict[str, object]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    answer = httpx.post(f"{guarded.proc.root_url}{path}", json={"model": MODEL}, headers=headers, timeout=10)
    assert answer.status_code == 401
    return answer.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("declared", [1_000_000, 8_000_000])  # under and over the guarded server's 1 MiB limit
@pytest.mark.parametrize("authorization", [f"Bearer {WRONG_KEY}", None])
def test_R2_3_a_declared_body_is_refused_401_before_it_is_sent(
    guarded: Guarded, path: str, declared: int, authorization: str | None
) -> None:
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        sock.sendall(_head(path, f"Content-Length: {declared}", authorization))
        started = time.monotonic()
        status, headers, body = _read_response(sock)
        took = time.monotonic() - started
    # Waiting for the body would be 408 after 2 s; a size check before the key, 413.
    assert status == 401, body
    assert took < 1.5, took
    assert headers["content-type"] == "application/json" and "x-request-id" in headers
    # The very answer a client that sent its whole body gets.
    assert json.loads(body) == _the_envelope_of_a_whole_request(guarded, path, authorization)


@pytest.mark.parametrize("path", ROUTES)
def test_R2_3_an_unauthenticated_body_is_never_parsed(guarded: Guarded, path: str) -> None:
    """Invalid JSON with a wrong key is the key's 401, not the body's 400: the body was not parsed."""
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        payload = b'{"model": "' + b"\x00" * 100 + b"]]"
        sock.sendall(_head(path, f"Content-Length: {len(payload)}") + payload)
        status, _, body = _read_response(sock)
    assert status == 401, body
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


def test_R2_3_an_endless_chunked_body_is_refused_401_at_its_first_chunk_and_then_cut_off(guarded: Guarded) -> None:
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        piece = b"a" * (64 * 1024)
        sock.sendall(_head("/v1/chat/completions", "Transfer-Encoding: chunked") + b"%x\r\n%s\r\n" % (len(piece), piece))
        started = time.monotonic()
        status, _, body = _read_response(sock)
        assert status == 401, body
        assert time.monotonic() - started < 1.5
        # The rest of the body is discarded, not waited for: trickling it does not keep the connection
        # (the guarded server's 2 s head deadline bounds what follows an early answer).
        trickled_for = 0.0
        try:
            while trickled_for < 8:
                sock.sendall(b"1\r\na\r\n")
                time.sleep(0.25)
                trickled_for = time.monotonic() - started
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert trickled_for < 5, "the server kept reading a refused request's body"


def test_R2_3_the_sdk_sending_a_large_body_with_a_wrong_key_gets_its_authentication_error(guarded: Guarded) -> None:
    """The 401 comes before the upload ends; the server discards the rest and the SDK still reads the 401."""
    client = openai.OpenAI(api_key=WRONG_KEY, base_url=guarded.proc.base_url, max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.embeddings.create(model=MODEL, input="lighthouse " * 90_000)  # ~1 MB, under the 1 MiB limit
    assert refused.value.code == "invalid_api_key"


def test_R2_3_a_valid_key_still_gets_the_body_limits_and_its_answer(guarded: Guarded) -> None:
    """The key check comes first; for a client that passes it nothing else changed."""
    auth = f"Bearer {guarded.key}"
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        sock.sendall(_head("/v1/chat/completions", "Content-Length: 8000000", auth))
        status, headers, body = _read_response(sock)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert headers.get("connection") == "close"
    payload = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}).encode()
    with socket.create_connection(("127.0.0.1", guarded.proc.port)) as sock:
        sock.sendall(_head("/v1/chat/completions", f"Content-Length: {len(payload)}", auth) + payload)
        status, headers, body = _read_response(sock, timeout=60)
    assert status == 200, body
    assert headers["openai-project"] == guarded.project
    assert json.loads(body)["usage"]["completion_tokens"] == 1


# -- unauthenticated connections per address --------------------------------------------------

CAP = 4
MAX_CONNECTIONS = 24  # so at most 12 unauthenticated connections, whatever their addresses


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    proc = start_server(
        tmp_path / "capped",
        MODELHOST_MAX_UNAUTHENTICATED_PER_ADDRESS=str(CAP),
        MODELHOST_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        MODELHOST_HEADER_TIMEOUT_SECONDS="6",
        MODELHOST_EMBEDDING_MODEL_ENABLED="false",
        MODELHOST_CHAT_MODEL_EMBEDDINGS="false",
    )
    try:
        yield proc, make_key(proc)["secret"]
    finally:
        proc.stop()


def _connect(proc: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", proc.port), timeout=5, source_address=(source, 0))


def _idle(proc: ServerProcess, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """`count` connections that send nothing (yet), each accepted by the server before the next opens."""
    opened = []
    for _ in range(count):
        sock = _connect(proc, source)
        assert _is_open(sock, 0.2), "the server refused a connection within the cap"
        opened.append(sock)
    return opened


def _admitted(proc: ServerProcess, source: str = "127.0.0.1") -> socket.socket | None:
    """A new connection if the server keeps it open, else None."""
    sock = _connect(proc, source)
    if _is_open(sock, 0.2):
        return sock
    sock.close()
    return None


def _authenticated_request(sock: socket.socket, key: str) -> int:
    return _keyed_request(sock, key)[0]


def _keyed_request(sock: socket.socket, key: str) -> tuple[int, dict[str, str]]:
    """A keep-alive GET /v1/models with `key` on `sock`: its status and headers."""
    sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    status, headers, _ = _read_response(sock)
    return status, headers


def test_R2_3_unauthenticated_connections_are_capped_per_client_address(capped: tuple[ServerProcess, str]) -> None:
    proc, key = capped
    held = _idle(proc, CAP)
    try:
        # One more from this address is closed at once, before a byte is read: a request on it gets nothing.
        beyond = _connect(proc)
        assert closed_within(beyond, 3) < 1.0
        beyond.close()
        with _connect(proc) as refused:
            try:
                refused.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert closed_within(refused, 3) < 1.0

        # Another address is not affected (all of 127/8 is loopback).
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10) as other:
            answer = other.get(f"{proc.base_url}/models", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200

        # A connection stops counting once a request on it authenticated.
        held.pop().close()
        authed = wait_until(lambda: _admitted(proc), 5)  # once the server saw that one close
        held.append(authed)
        assert _authenticated_request(authed, key) == 200
        held.extend(_idle(proc, 1))  # three idle, one authenticated: room for one more unauthenticated
        with _connect(proc) as beyond:
            assert closed_within(beyond, 3) < 1.0
    finally:
        for sock in held:
            sock.close()

    # Closed connections give their places back: once the server saw them go, a full set fits again.
    time.sleep(0.5)
    again = _idle(proc, CAP)
    try:
        with _connect(proc) as beyond:
            assert closed_within(beyond, 3) < 1.0
        # The ones that never send a head leave at the head deadline, and take nothing with them.
        for sock in again:
            closed_within(sock, 10)
    finally:
        for sock in again:
            sock.close()
    time.sleep(0.3)
    for sock in _idle(proc, CAP):
        sock.close()


def test_R2_3_a_connection_that_authenticated_once_counts_again_after_a_wrong_key(capped: tuple[ServerProcess, str]) -> None:
    """A valid key on a connection's first request does not make it free to hold with wrong keys after."""
    proc, key = capped
    held = _idle(proc, CAP)
    try:
        for sock in held:  # each authenticates: none counts any more
            assert _keyed_request(sock, key)[0] == 200
        spare = _idle(proc, 1)[0]  # so a new one is admitted
        spare.close()
        time.sleep(0.3)
        for sock in held:  # each now fails its key check: each counts again, and stays open (there is room)
            status, headers = _keyed_request(sock, WRONG_KEY)
            assert status == 401 and headers.get("connection") != "close"
            assert _is_open(sock, 0.2)
        with _connect(proc) as beyond:  # the address is full again: a new connection is closed at once
            assert closed_within(beyond, 3) < 1.0
        # A counted connection whose wrong key comes again stays (it takes no new place) ...
        assert _keyed_request(held[0], WRONG_KEY)[0] == 401 and _is_open(held[0], 0.2)
        # ... and a valid key frees its place at once.
        assert _keyed_request(held[0], key)[0] == 200
        fresh = wait_until(lambda: _admitted(proc), 5)
        held.append(fresh)
    finally:
        for sock in held:
            sock.close()


def test_R2_3_a_wrong_key_on_an_authenticated_connection_with_no_room_left_closes_it(capped: tuple[ServerProcess, str]) -> None:
    proc, key = capped
    authed = _connect(proc)
    held: list[socket.socket] = [authed]
    try:
        assert _keyed_request(authed, key)[0] == 200
        held.extend(_idle(proc, CAP))  # the address's unauthenticated places are all taken
        status, headers = _keyed_request(authed, WRONG_KEY)
        assert status == 401 and headers.get("connection") == "close"  # told, then closed after the answer
        assert closed_within(authed, 3) < 1.0
    finally:
        for sock in held:
            sock.close()


def test_R2_3_unauthenticated_connections_of_all_clients_hold_at_most_half_of_the_server(capped: tuple[ServerProcess, str]) -> None:
    """Many addresses, each within its own cap, hold at most half of MAX_CONNECTIONS: a new connection
    beyond closes the oldest of theirs, so clients with keys still get in and the rest stays free."""
    proc, key = capped
    half = MAX_CONNECTIONS // 2
    sources = [f"127.0.0.{10 + i}" for i in range(half // CAP)]
    held: list[socket.socket] = []
    try:
        for source in sources:
            held.extend(_idle(proc, CAP, source))
        assert len(held) == half
        # A client with a key, on new connections, is served; each of its connections closed the oldest idle one.
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.98"), timeout=10) as client:
            for _ in range(2):
                assert client.get(f"{proc.base_url}/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert closed_within(held[0], 3) < 1.0
        # Three from new addresses: the first takes the place the served client's connection left when
        # it authenticated, the next two each close the oldest; never more than half in all.
        newcomers = [_connect(proc, f"127.0.0.{50 + i}") for i in range(3)]
        held.extend(newcomers)
        assert all(_is_open(sock, 0.2) for sock in newcomers)
        assert closed_within(held[1], 3) < 1.0 and closed_within(held[2], 3) < 1.0
        assert all(_is_open(sock, 0.1) for sock in held[4:])  # the rest, and the newest, are kept
        # A connection that authenticated is never closed for a newcomer.
        authed = held[5]
        assert _keyed_request(authed, key)[0] == 200
        held.extend(_connect(proc, f"127.0.0.{60 + i}") for i in range(half))  # a whole new half
        assert _is_open(authed, 0.3) and _keyed_request(authed, key)[0] == 200
    finally:
        for sock in held:
            sock.close()
