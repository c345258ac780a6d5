"""An engine that forwards to OpenAI-compatible servers (vLLM, SGLang, TGI, llama.cpp's server,
Ollama, another modelhost): to the pipeline it is one more `Engine`.

Every request is sent upstream as a stream (``stream: true`` with ``stream_options.include_usage``)
to the replica with the fewest requests in flight whose circuit is closed (`UpstreamPool`). A
connection that cannot be opened is retried on the next replica: nothing reached the upstream, so
nothing can run twice. Once a request was sent it is never retried here: the client gets a clean
error and decides (the SDKs retry 5xx). The upstream's chunks become the same events the
llama.cpp engine emits, its usage a `UsageReported` event; without one, completion tokens are
counted one per streamed chunk (one per logprob entry when logprobs were asked for) and the prompt
is the API layer's estimate.

Errors (`upstream_errors`; `pipeline.engine_errors` says what the client is told): the upstream's
4xx about the request are `UpstreamRejected` with its status and its words (upstream model names,
URLs, paths, its key and anything credential-like removed by `Scrubber`); its 401/403/404 mean our
configuration is wrong and its 5xx mean it failed (`UpstreamFailed`, a 502); 429/503
(`UpstreamOverloaded`) and open circuits (`UpstreamUnavailable`): 503 with Retry-After; timeouts
(`UpstreamTimeout`): 504. No upstream URL or key appears in any error, log line or state (a
`ScrubbingFilter` guards this module's and httpx's loggers while the engine runs); replicas are
called "replica N".

Prefix caches: the upstream's cache is shared by every tenant modelhost forwards for, so with
``salt_requests`` (the models file's ``cache_salt``, for vLLM servers) each request carries its
organization's ``cache_salt`` (`CacheSalts`) and the upstream's `cached_tokens` are the caller's
own; without it no salt is sent and `cached_tokens` is reported as 0, so one organization cannot
learn what another sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import NoReturn
from urllib.parse import urlsplit

import httpx

from modelhost.engine.base import EngineFailed, GenerationRequest
from modelhost.engine.cache_salt import CacheSalts
from modelhost.engine.generation_task import CoroutineGenerationTask
from modelhost.engine.upstream_errors import UpstreamFailed, UpstreamFault, UpstreamOverloaded, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from modelhost.engine.upstream_pool import Replica, UpstreamPool
from modelhost.engine.upstream_scrub import Scrubber, ScrubbingFilter
from modelhost.engine.upstream_stream import ChunkReader, SSEDecoder, UpstreamProtocolError

logger = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024
MAX_WHOLE_BODY = 16 * 1024 * 1024
# Loggers that can see an upstream's words or its request: scrubbed while an upstream engine runs.
_LOGGERS = ("modelhost.engine.upstream", "modelhost.engine.upstream_pool", "modelhost.engine.upstream_stream", "httpx", "httpcore")


class UpstreamGeneration(CoroutineGenerationTask):
    """One forwarded request: iterate it for events; `cancel()` closes the upstream connection.

    Its token counts are the upstream's usage once reported, else what `ChunkReader` counted."""

    def __init__(self, engine: UpstreamEngine, request: GenerationRequest) -> None:
        assert request.upstream is not None, "a forwarding engine needs GenerationRequest.upstream"
        super().__init__(request.n)
        self.reader = ChunkReader(request.upstream.endpoint, request.n, report_cached=engine.reports_cached_tokens)
        self._engine = engine
        self._request = request

    @property
    def completion_tokens(self) -> int:
        usage = self.reader.usage
        return usage.completion_tokens if usage is not None else self.reader.completion_tokens

    @property
    def cached_tokens(self) -> int:
        return self.reader.usage.cached_tokens if self.reader.usage is not None else 0

    async def run(self) -> None:
        await self._engine.forward(self._request, self.reader, self.emit)

    def unexpected(self, error: Exception) -> EngineFailed:
        logger.exception("model %s: forwarding %s failed unexpectedly", self._engine.model_id, self._request.request_id)
        return UpstreamFailed(type(error).__name__, UpstreamFault.CRASHED)


class UpstreamEngine:
    """Serves `model_id` from the OpenAI-compatible servers at `base_urls` (replicas of one model)."""

    forwards_requests = True

    def __init__(
        self,
        *,
        model_id: str,
        base_urls: Sequence[str],
        upstream_model: str,
        context_length: int,
        api_key: str | None = None,
        max_n: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        health_path: str = "models",
        health_interval: float = 10.0,
        failure_threshold: int = 3,
        cooldown: float = 10.0,
        cache_salts: CacheSalts | None = None,
        salt_requests: bool = False,
    ) -> None:
        assert cache_salts is not None or not salt_requests, "salting requests needs the salts"
        self.model_id = model_id
        self.context_length = context_length
        self.max_n = max_n
        self.pool = UpstreamPool.of(list(base_urls), failure_threshold=failure_threshold, cooldown=cooldown)
        self._upstream_model = upstream_model
        self._api_key = api_key
        self._timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=read_timeout)
        self._health_path = health_path
        self._health_interval = health_interval
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._cache_salts = cache_salts
        self._salt_requests = salt_requests
        # What an upstream's message or a log record may contain that nobody may read.
        self._scrubber = Scrubber(secrets=[api_key], hidden=[*base_urls, *(urlsplit(u).netloc for u in base_urls)])
        self._log_filter = ScrubbingFilter(self._scrubber)

    @property
    def reports_cached_tokens(self) -> bool:
        """Whether the upstream's `cached_tokens` can only count the caller's own prefixes."""
        return self._salt_requests or (self._cache_salts is not None and self._cache_salts.shared)

    # -- what a forwarding engine does not have ------------------------------------------------
    def _no_tokenizer(self) -> NoReturn:
        raise TypeError(f"model {self.model_id} forwards requests upstream; it has no tokenizer or chat template")

    def tokenize(self, text: str) -> list[int]:
        self._no_tokenizer()

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._no_tokenizer()

    def render_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> str:
        self._no_tokenizer()

    def tokenize_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> list[int]:
        self._no_tokenizer()

    def check_grammar(self, grammar: str) -> None:
        self._no_tokenizer()

    @property
    def start_token(self) -> int:
        self._no_tokenizer()

    @property
    def vocab_size(self) -> int:
        self._no_tokenizer()

    @property
    def template_supports_tools(self) -> bool:
        self._no_tokenizer()

    # -- the engine interface ------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> UpstreamGeneration:
        assert self._client is not None, "start() the engine first"
        return UpstreamGeneration(self, request)

    def state(self) -> dict[str, object]:
        return {
            "model": self.model_id,
            "backend": "openai",
            "slots_busy": self.pool.outstanding,
            "queue_depth": 0,
            "replicas": self.pool.state(),
        }

    async def start(self) -> None:
        # httpx logs every request's URL at INFO and httpcore each connection's host at DEBUG: an
        # upstream's address must not reach the logs at any level.
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
        for name in _LOGGERS:
            logging.getLogger(name).addFilter(self._log_filter)
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,  # a redirect could point anywhere; the configured URL is the only one
            trust_env=False,  # no proxy variables: the operator's URLs are reached directly
        )
        if self._health_interval > 0:
            self._health_task = asyncio.create_task(self._health_loop())

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        for name in _LOGGERS:
            logging.getLogger(name).removeFilter(self._log_filter)

    # -- forwarding ----------------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _body(self, request: GenerationRequest) -> dict[str, object]:
        assert request.upstream is not None
        body: dict[str, object] = {**request.upstream.body, "model": self._upstream_model}
        if request.n > 1:
            body["n"] = request.n
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        salt = self._cache_salts.of(request.cache_scope) if self._salt_requests and self._cache_salts is not None else None
        if salt is not None:
            body["cache_salt"] = salt
        return body

    async def forward(self, request: GenerationRequest, reader: ChunkReader, emit: Callable[[object], None]) -> None:
        """Send `request` to a replica (another on connect errors only) and emit its events."""
        assert self._client is not None and request.upstream is not None
        payload = json.dumps(self._body(request), separators=(",", ":")).encode()
        tried: set[int] = set()
        while True:
            replica = self.pool.choose(tried)
            if replica is None:
                raise self._unavailable(request, bool(tried))
            tried.add(replica.index)
            replica.outstanding += 1
            try:
                response = await self._send(replica, request.upstream.endpoint, payload)
                if response is None:
                    continue  # could not connect: nothing was sent, the next replica gets it
                try:
                    await self._relay(replica, response, request, reader, emit)
                finally:
                    await response.aclose()
                return
            finally:
                replica.outstanding -= 1
                replica.breaker.settled()

    async def _send(self, replica: Replica, endpoint: str, payload: bytes) -> httpx.Response | None:
        assert self._client is not None
        http_request = self._client.build_request(
            "POST", f"{replica.url}/{endpoint}", content=payload, headers={**self._auth(), "Accept": "text/event-stream", "Content-Type": "application/json"}
        )
        try:
            return await self._client.send(http_request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            replica.breaker.failed()
            logger.warning("model %s: %s could not be reached (%s); trying another replica", self.model_id, replica.label, type(exc).__name__)
            return None
        except httpx.TimeoutException as exc:
            replica.breaker.failed()
            logger.warning("model %s: %s sent no response in time", self.model_id, replica.label)
            raise UpstreamTimeout("upstream timeout") from exc
        except httpx.HTTPError as exc:
            replica.breaker.failed()
            logger.warning("model %s: %s dropped the request (%s)", self.model_id, replica.label, type(exc).__name__)
            raise UpstreamFailed("upstream connection failed", UpstreamFault.CONNECTION_FAILED) from exc

    async def _relay(
        self, replica: Replica, response: httpx.Response, request: GenerationRequest, reader: ChunkReader, emit: Callable[[object], None]
    ) -> None:
        if response.status_code != 200:
            body = await _read_bounded(response, MAX_ERROR_BODY)
            if response.status_code >= 500:
                replica.breaker.failed()
            else:
                replica.breaker.succeeded()  # it answered: the request, not the replica, is the problem
            raise self._error(replica, response, body, f"upstream HTTP {response.status_code}")
        replica.breaker.succeeded()
        try:
            if response.headers.get("content-type", "").startswith("application/json"):
                # A server that ignores `stream`: one whole completion.
                whole = json.loads(await _read_bounded(response, MAX_WHOLE_BODY))
                if isinstance(whole, dict) and "error" in whole:
                    raise self._error(replica, response, json.dumps(whole).encode(), "upstream error body")
                for event in reader.events(whole, whole=True):
                    emit(event)
            else:
                await self._relay_stream(response, reader, emit)
        except (UpstreamProtocolError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            replica.breaker.failed()
            logger.warning("model %s: %s sent a malformed response: %s", self.model_id, replica.label, self._scrubber.clean(str(exc))[:200])
            raise UpstreamFailed("malformed upstream response", UpstreamFault.MALFORMED) from exc
        except httpx.TimeoutException as exc:
            replica.breaker.failed()
            logger.warning("model %s: %s went silent mid-response", self.model_id, replica.label)
            raise UpstreamTimeout("upstream read timeout", began=True) from exc
        except httpx.HTTPError as exc:
            replica.breaker.failed()
            logger.warning("model %s: %s broke the connection mid-response (%s)", self.model_id, replica.label, type(exc).__name__)
            raise UpstreamFailed("upstream stream broken", UpstreamFault.CONNECTION_BROKEN) from exc
        if not reader.finished:
            replica.breaker.failed()
            logger.warning("model %s: %s ended the response before every choice finished", self.model_id, replica.label)
            raise UpstreamFailed("upstream stream truncated", UpstreamFault.TRUNCATED)

    async def _relay_stream(self, response: httpx.Response, reader: ChunkReader, emit: Callable[[object], None]) -> None:
        decoder = SSEDecoder()
        async for raw in response.aiter_bytes():
            for data in decoder.feed(raw):
                if self._relay_event(data, reader, emit):
                    return
        for data in decoder.close():
            if self._relay_event(data, reader, emit):
                return

    def _relay_event(self, data: str, reader: ChunkReader, emit: Callable[[object], None]) -> bool:
        """Emit one event's events; True at `[DONE]`."""
        if data.strip() == "[DONE]":
            return True
        chunk = json.loads(data)
        if isinstance(chunk, dict) and chunk.get("error") is not None:
            # An error after the stream started: the upstream's own words, as a 502.
            raise self._mid_stream_error(chunk)
        for event in reader.events(chunk):
            emit(event)
        return False

    # -- errors --------------------------------------------------------------------------------
    def _unavailable(self, request: GenerationRequest, tried: bool) -> UpstreamUnavailable:
        wait = self.pool.retry_after()
        # Per request at INFO: the outage itself is logged once per replica, when its circuit or health changes.
        if tried:
            logger.info("model %s: no replica could be reached for %s", self.model_id, request.request_id)
        else:
            logger.info("model %s: every replica's circuit is open; refusing %s", self.model_id, request.request_id)
        return UpstreamUnavailable("no upstream replica", unreachable=tried, retry_after=wait)

    def _error(self, replica: Replica, response: httpx.Response, body: bytes, summary: str) -> EngineFailed:
        """What an upstream's error answer (`body`, of HTTP status `response.status_code`) means."""
        status = response.status_code
        message, _, param, code = _error_fields(body)
        message = self._relayed(message)
        param, code = self._scrubber.field(param), self._scrubber.field(code)
        if status in (401, 403, 404):
            logger.error("model %s: %s answered HTTP %d: check the model's upstream key and model name", self.model_id, replica.label, status)
            return UpstreamFailed(summary, UpstreamFault.MISCONFIGURED, status=status)
        if status in (429, 503):
            retry = _retry_after(response.headers.get("retry-after"))
            logger.warning("model %s: %s is overloaded (HTTP %d)", self.model_id, replica.label, status)
            return UpstreamOverloaded(summary, retry_after=retry)
        if status in (408, 504):
            return UpstreamTimeout(summary)
        if status >= 500 or status < 400:
            logger.warning("model %s: %s answered HTTP %d", self.model_id, replica.label, status)
            return UpstreamFailed(summary, UpstreamFault.SERVER_ERROR, status=status)
        return UpstreamRejected(summary, status=status, upstream_message=message, param=param, code=code)

    def _mid_stream_error(self, chunk: dict[str, object]) -> UpstreamFailed:
        message, _, _, _ = _error_fields(json.dumps(chunk).encode())
        logger.warning("model %s: upstream reported an error mid-stream", self.model_id)
        return UpstreamFailed("upstream error event", UpstreamFault.ERROR_EVENT, detail=self._relayed(message))

    def _relayed(self, message: str) -> str:
        """An upstream's message as the client may read it: our model name, nothing secret or internal."""
        if not message:
            return ""
        # Our name goes in after scrubbing, which could otherwise take a long model id for a token.
        return self._scrubber.clean(message.replace(self._upstream_model, "(model)")).replace("(model)", self.model_id)

    # -- health --------------------------------------------------------------------------------
    def _health_url(self, replica: Replica) -> str:
        if self._health_path.startswith("/"):
            parts = urlsplit(replica.url)
            return f"{parts.scheme}://{parts.netloc}{self._health_path}"
        return f"{replica.url}/{self._health_path}"

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._check(r) for r in self.pool.replicas))
            await asyncio.sleep(self._health_interval)

    async def _check(self, replica: Replica) -> None:
        assert self._client is not None
        timeout = httpx.Timeout(min(5.0, self._health_interval or 5.0), connect=self._timeout.connect)
        try:
            response = await self._client.get(self._health_url(replica), headers=self._auth(), timeout=timeout)
            await response.aclose()
            healthy = response.status_code == 200
        except httpx.HTTPError:
            healthy = False
        was = replica.breaker.state
        if healthy:
            if was != "closed":
                logger.warning("model %s: %s passed its health check; sending it requests again", self.model_id, replica.label)
            replica.breaker.reset()
        else:
            if was == "closed":
                logger.warning("model %s: %s failed its health check; no requests until it recovers", self.model_id, replica.label)
            replica.breaker.trip()


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise UpstreamProtocolError(f"the response is larger than {limit} bytes")
    return data


def _error_fields(body: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, param, code) from an OpenAI error body, or FastAPI's {"detail": ...}."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "", None, None, None
    if not isinstance(data, dict):
        return "", None, None, None
    error = data.get("error")
    if isinstance(error, dict):

        def short(key: str) -> str | None:
            value = error.get(key)
            return value if isinstance(value, str) and len(value) <= 64 else None

        message = error.get("message")
        return (message if isinstance(message, str) else ""), short("type"), short("param"), short("code")
    if isinstance(error, str):
        return error, None, None, None
    detail = data.get("detail")
    if isinstance(detail, str):
        return detail, None, None, None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = ".".join(str(p) for p in detail[0].get("loc", []) if p != "body")
        return f"Invalid value for '{loc}': {detail[0].get('msg', 'invalid value')}.", None, loc or None, "invalid_value"
    return "", None, None, None


def _retry_after(value: str | None) -> int:
    """An upstream's Retry-After as whole seconds from 1 to 120 (1 when it sent none we can read)."""
    try:
        seconds = int(float(value)) if value else 1
    except ValueError:
        seconds = 1
    return min(max(seconds, 1), 120)

