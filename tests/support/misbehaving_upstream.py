"""A tiny OpenAI-compatible server on loopback whose every model misbehaves in its own way.

``with MisbehavingUpstream() as up: ...`` serves ``up.base_url`` (``http://127.0.0.1:PORT/v1``) from
a thread with its own asyncio loop, stdlib only. The upstream ``model`` named in a request picks
the behaviour (see `BEHAVIOURS`); ``GET /v1/models`` answers 200 (health checks), unless
``up.healthy`` is False. `requests` counts the POSTs each behaviour received.

Error bodies deliberately carry the server's own URL, a file path and the upstream model name, so
tests can check that none of them reaches a client; ``echo-key`` even repeats the request's
`Authorization` header. ``prefix-cache`` behaves like vLLM's prefix cache: a prompt seen before
with the same ``cache_salt`` reports its tokens as `cached_tokens`. ``batch`` behaves like vLLM's
scheduler: it runs `batch_size` requests at once and queues the rest first come, first served;
`batch_started` lists the last message of each request it started running.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import Awaitable, Callable

SECRET_PATH = "/opt/upstream/secret_engine.py"


def _chunk(model: str, text: str | None = None, finish: str | None = None, **extra: object) -> bytes:
    delta = {} if text is None else {"content": text}
    payload = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class MisbehavingUpstream:
    """See the module docstring."""

    def __init__(self) -> None:
        self.port = 0
        self.healthy = True
        self.requests: collections.Counter[str] = collections.Counter()
        self.bodies: list[dict[str, object]] = []
        self.headers: list[dict[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._hung: list[asyncio.StreamWriter] = []
        self.prefix_cache: set[tuple[object, str]] = set()  # (cache_salt, messages) seen, as vLLM keys its blocks
        self.batch_size = 64  # ``batch``: requests running at once (vLLM's max_num_seqs)
        self.batch_started: list[str] = []
        self._batch_running = 0
        self._batch_queue: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> MisbehavingUpstream:
        self._thread = threading.Thread(target=self._serve, name="misbehaving-upstream", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the misbehaving upstream did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._shutdown)
        assert self._thread is not None
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    def _shutdown(self) -> None:
        assert self._server is not None and self._loop is not None
        self._server.close()
        for writer in self._hung:
            writer.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_later(0.1, self._loop.stop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET":
                status = 200 if self.healthy else 503
                await _respond(writer, status, {"object": "list", "data": []})
                return
            request = json.loads(body)
            self.bodies.append(request)
            self.headers.append(headers)
            behaviour = str(request.get("model"))
            self.requests[behaviour] += 1
            handler = BEHAVIOURS.get(behaviour, _unknown_model)
            await handler(self, writer, request)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if writer not in self._hung:
                writer.close()

    def url_fragments(self) -> list[str]:
        """What must never reach a client: the URL, host:port, the port-bearing path, the file path."""
        return [self.base_url, f"127.0.0.1:{self.port}", SECRET_PATH]


async def _respond(writer: asyncio.StreamWriter, status: int, body: object, headers: dict[str, str] | None = None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    ctype = "application/json" if not isinstance(body, bytes) else "text/plain"
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(data)}\r\n{extra}connection: close\r\n\r\n".encode()
        + data
    )
    await writer.drain()


async def _start_stream(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
    await writer.drain()


Handler = Callable[[MisbehavingUpstream, asyncio.StreamWriter, dict[str, object]], Awaitable[None]]


async def _unknown_model(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _respond(writer, 404, {"error": {"message": f"The model `{request.get('model')}` does not exist", "type": "invalid_request_error"}})


async def _good(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    model = str(request["model"])
    await _start_stream(writer)
    for piece in ("Hello", " there"):
        writer.write(_chunk(model, piece))
    writer.write(_chunk(model, finish="stop"))
    usage = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    writer.write(b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage}).encode() + b"\n\n")
    writer.write(b"data: [DONE]\n\n")
    await writer.drain()


async def _slow(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    """Ten chunks a quarter second apart (a stream that is still running during a reload)."""
    model = str(request["model"])
    await _start_stream(writer)
    for i in range(10):
        writer.write(_chunk(model, f"w{i} "))
        await writer.drain()
        await asyncio.sleep(0.25)
    writer.write(_chunk(model, finish="stop") + b"data: [DONE]\n\n")
    await writer.drain()


async def _bad_request(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    message = (
        f"model {request['model']} at {up.base_url}/chat/completions: 'temperature' is invalid "
        f"(raised in {SECRET_PATH}, line 12)"
    )
    await _respond(writer, 400, {"error": {"message": message, "type": "BadRequestError", "param": "temperature", "code": "invalid_value"}})


async def _unprocessable(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _respond(writer, 422, {"detail": [{"loc": ["body", "messages", 0, "content"], "msg": "field required", "type": "missing"}]})


async def _context(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    message = "This model's maximum context length is 2048 tokens. However, you requested 5000 tokens."
    await _respond(writer, 400, {"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})


async def _unauthorized(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _respond(writer, 401, {"error": {"message": f"Invalid upstream key for {up.base_url}", "type": "invalid_request_error"}})


async def _crash(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    trace = f'Traceback (most recent call last):\n  File "{SECRET_PATH}", line 7\nRuntimeError: CUDA error at {up.base_url}'
    await _respond(writer, 500, trace.encode())


async def _overloaded(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _respond(writer, 503, {"error": {"message": "queue full", "type": "server_error"}}, {"retry-after": "7"})


async def _rate_limited(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _respond(writer, 429, {"error": {"message": "slow down", "type": "requests"}}, {"retry-after": "3"})


async def _hang(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    up._hung.append(writer)
    await asyncio.sleep(3600)


async def _hang_mid_stream(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _start_stream(writer)
    writer.write(_chunk(str(request["model"]), "Hel"))
    await writer.drain()
    up._hung.append(writer)
    await asyncio.sleep(3600)


async def _malformed(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _start_stream(writer)
    writer.write(b"data: {\"id\": \"x\", \"choices\": [{\"index\": 0, \"delta\": {\"content\": \"a\"\n\n")
    await writer.drain()


async def _malformed_later(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _start_stream(writer)
    writer.write(_chunk(str(request["model"]), "fine so far"))
    writer.write(b'data: {"choices": [{"index": 7, "delta": {"content": "wrong choice"}}]}\n\n')
    await writer.drain()


async def _truncated(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _start_stream(writer)
    writer.write(_chunk(str(request["model"]), "cut "))
    await writer.drain()
    # The connection closes here: no finish_reason, no [DONE].


async def _error_event(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    await _start_stream(writer)
    writer.write(_chunk(str(request["model"]), "partial "))
    error = {"error": {"message": f"CUDA out of memory in {SECRET_PATH} ({up.base_url})", "type": "server_error", "code": 500}}
    writer.write(b"data: " + json.dumps(error).encode() + b"\n\n")
    await writer.drain()


async def _prefix_cache(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    """A vLLM-like server: 11 prompt tokens, all cached when the same prompt came with the same `cache_salt`."""
    key = (request.get("cache_salt"), json.dumps(request.get("messages") or request.get("prompt"), sort_keys=True))
    cached = 11 if key in up.prefix_cache else 0
    up.prefix_cache.add(key)
    model = str(request["model"])
    await _start_stream(writer)
    writer.write(_chunk(model, "Hi") + _chunk(model, finish="stop"))
    usage = {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": cached}}
    writer.write(b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage}).encode() + b"\n\n")
    writer.write(b"data: [DONE]\n\n")
    await writer.drain()


async def _echo_key(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    """A 400 whose message, param and code repeat the request's key (whole, after `Bearer`, cut short)."""
    auth = up.headers[-1].get("authorization", "")
    key = auth.removeprefix("Bearer ")
    message = (
        f"invalid 'temperature' (request sent with Authorization: {auth}; api_key={key}; "
        f"key {key[:12]}**** rejected; {{\"token\": \"{key[3:20]}\"}})"
    )
    await _respond(writer, 400, {"error": {"message": message, "type": "invalid_request_error", "param": key, "code": key[:30]}})


async def _whole_json(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    """A server that ignores `stream` and answers one JSON completion."""
    await _respond(
        writer,
        200,
        {
            "id": "chatcmpl-whole",
            "object": "chat.completion",
            "created": 1,
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole answer"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        },
    )


async def _tool_call(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    """A well-behaved upstream that answers with a streamed tool call (two argument pieces)."""
    model = str(request["model"])
    await _start_stream(writer)
    first = {"index": 0, "id": "call_up1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    for delta in ({"role": "assistant", "tool_calls": [first]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}):
        payload = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
        writer.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
    writer.write(_chunk(model, finish="tool_calls") + b"data: [DONE]\n\n")
    await writer.drain()


async def _batch_slot(up: MisbehavingUpstream) -> None:
    """A place in the batch, first come, first served."""
    if up._batch_running < up.batch_size and not up._batch_queue:
        up._batch_running += 1
        return
    turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    up._batch_queue.append(turn)
    await turn  # the request that left handed its place on


def _leave_batch(up: MisbehavingUpstream) -> None:
    while up._batch_queue:
        turn = up._batch_queue.popleft()
        if not turn.done():
            turn.set_result(None)
            return
    up._batch_running -= 1


async def _batch(up: MisbehavingUpstream, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
    """A vLLM-like batch: once running, a chunk at once and another every 0.2 s until the client goes."""
    messages = request.get("messages") or [{"content": request.get("prompt")}]
    await _batch_slot(up)
    try:
        up.batch_started.append(str(messages[-1]["content"]))  # type: ignore[index]
        await _start_stream(writer)
        while True:
            writer.write(_chunk(str(request["model"]), "tick "))
            await writer.drain()
            await asyncio.sleep(0.2)
    finally:
        _leave_batch(up)


BEHAVIOURS: dict[str, Handler] = {
    "good": _good,
    "slow": _slow,
    "bad-request": _bad_request,
    "unprocessable": _unprocessable,
    "context": _context,
    "unauthorized": _unauthorized,
    "crash": _crash,
    "overloaded": _overloaded,
    "rate-limited": _rate_limited,
    "hang": _hang,
    "hang-mid-stream": _hang_mid_stream,
    "malformed": _malformed,
    "malformed-later": _malformed_later,
    "truncated": _truncated,
    "error-event": _error_event,
    "whole-json": _whole_json,
    "tool-call": _tool_call,
    "prefix-cache": _prefix_cache,
    "echo-key": _echo_key,
    "batch": _batch,
}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
