"""J1–J5. The server never fetches a URL a request names: image and file URLs are refused with 400,
and nothing connects to the address they point at."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from serverproc import MODEL

from .conftest import Guarded


@pytest.fixture
def listener() -> tuple[str, list[object]]:
    """A loopback TCP listener that records every connection it receives (for 3 s at most per accept)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    hits: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, addr = sock.accept()
            except (socket.timeout, OSError):
                continue
            hits.append(addr)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}", hits
    stop.set()
    thread.join(timeout=2)
    sock.close()


def test_J1_J5_image_and_file_urls_are_refused_and_never_fetched(guarded: Guarded, listener) -> None:  # type: ignore[no-untyped-def]
    address, hits = listener
    urls = [f"http://{address}/cat.png", f"http://{address}/redirect?to=http://169.254.169.254/", "file:///etc/passwd",
            f"https://{address}/x.jpg", "data:image/png;base64,iVBORw0KGgo="]
    for url in urls:
        for stream in (False, True):
            body = {"model": MODEL, "max_tokens": 2, "stream": stream, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]}
            response = httpx.post(f"{guarded.proc.base_url}/chat/completions", json=body, headers=guarded.auth, timeout=30)
            assert response.status_code == 400, (url, response.text)
    # No request field can point the server at an upstream either: these are ignored, never dialled.
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}],
            "base_url": f"http://{address}/v1", "api_base": f"http://{address}", "callback_url": f"http://{address}/cb"}
    assert httpx.post(f"{guarded.proc.base_url}/chat/completions", json=body, headers=guarded.auth, timeout=60).status_code == 200
    assert hits == []
