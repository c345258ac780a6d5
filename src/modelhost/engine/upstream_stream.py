"""Reading an OpenAI-compatible upstream's answer: SSE framing, then chunks → engine events.

``SSEDecoder().feed(bytes) -> [data, ...]`` splits a byte stream into the `data` of each server-sent
event (any line ending, multi-line data, comments, a bounded event size). ``ChunkReader(endpoint,
n)`` turns each chunk (or a whole non-streamed completion) into `TextDelta`, `ToolCallDelta`,
`ChoiceFinished` and `UsageReported` events, counting completion tokens itself in case the
upstream never reports usage. Its `cached_tokens` are passed on only with ``report_cached=True``
(the upstream's prefix cache is salted per organization): otherwise they could count a prefix
another tenant left there, and are reported as 0. Anything that is not what OpenAI's format allows is an
`UpstreamProtocolError`; the engine turns it into a clean 502.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from modelhost.engine.base import ChoiceFinished, EngineEvent, TextDelta, TokenLogprob, ToolCallDelta, UsageReported

MAX_EVENT_BYTES = 4 * 1024 * 1024
CHAT_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
COMPLETION_FINISH_REASONS = frozenset({"stop", "length", "content_filter"})


class UpstreamProtocolError(Exception):
    """The upstream answered with something that is not OpenAI's streaming format."""


class SSEDecoder:
    """Incremental server-sent-events parser; returns the `data` of every completed event."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._size = 0
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        events: list[str] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                if len(self._buffer) > self._max:
                    raise UpstreamProtocolError(f"an event line is longer than {self._max} bytes")
                return events
            end, skip = cut
            line, self._buffer = self._buffer[:end], self._buffer[end + skip :]
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                self._data, self._size = [], 0
                continue
            if line.startswith(b":"):
                continue  # a comment (keep-alive ping)
            name, _, value = line.partition(b":")
            if name != b"data":
                continue  # event:, id:, retry: carry nothing we use
            self._size += len(value)
            if self._size > self._max:
                raise UpstreamProtocolError(f"an event is larger than {self._max} bytes")
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UpstreamProtocolError("an event is not UTF-8") from exc
            self._data.append(text[1:] if text.startswith(" ") else text)

    def close(self) -> list[str]:
        """The last event when the stream ended without its blank line."""
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        return events


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """(index, length) of the first line ending (\\r\\n, \\n or \\r) in `buffer`, if complete."""
    lf, cr = buffer.find(b"\n"), buffer.find(b"\r")
    if cr == -1 or (lf != -1 and lf < cr):
        return (lf, 1) if lf != -1 else None
    if cr + 1 == len(buffer):
        return None  # \r at the end: wait for a possible \n
    return cr, 2 if buffer[cr + 1] == 0x0A else 1


@dataclass
class _Choice:
    tokens: int = 0
    finished: bool = False
    calls: int = 0  # tool calls seen, for upstreams that omit the call index in a whole message


@dataclass
class ChunkReader:
    """``ChunkReader("chat/completions", n=2).events(chunk) -> [EngineEvent, ...]``."""

    endpoint: str
    n: int
    report_cached: bool = False
    choices: list[_Choice] = field(default_factory=list)
    usage: UsageReported | None = None

    def __post_init__(self) -> None:
        self.choices = [_Choice() for _ in range(self.n)]

    @property
    def chat(self) -> bool:
        return self.endpoint == "chat/completions"

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.choices)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def events(self, chunk: object, *, whole: bool = False) -> list[EngineEvent]:
        """Events of one streamed chunk, or (`whole`) of a complete non-streamed response."""
        if not isinstance(chunk, Mapping):
            raise UpstreamProtocolError("a chunk is not a JSON object")
        choices = chunk.get("choices", [])
        if not isinstance(choices, list):
            raise UpstreamProtocolError("`choices` is not a list")
        out: list[EngineEvent] = []
        for position, choice in enumerate(choices):
            if not isinstance(choice, Mapping):
                raise UpstreamProtocolError("a choice is not an object")
            index = choice.get("index", position if whole else None)
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.n:
                raise UpstreamProtocolError(f"a choice index is not one of the {self.n} asked for")
            if self.choices[index].finished:
                raise UpstreamProtocolError(f"choice {index} continued after it finished")
            if self.chat:
                out += self._chat_choice(index, choice, whole)
            else:
                out += self._completion_choice(index, choice)
            reason = choice.get("finish_reason")
            if reason is not None:
                out.append(self._finish(index, reason))
        usage = chunk.get("usage")
        if usage is not None:
            self.usage = _usage(usage, report_cached=self.report_cached)
            out.append(self.usage)
        return out

    def _chat_choice(self, index: int, choice: Mapping[str, object], whole: bool) -> list[EngineEvent]:
        delta = choice.get("message" if whole else "delta") or {}
        if not isinstance(delta, Mapping):
            raise UpstreamProtocolError("a delta is not an object")
        out: list[EngineEvent] = []
        logprobs = _chat_logprobs(choice.get("logprobs"))
        content = delta.get("content")
        if content is not None and not isinstance(content, str):
            raise UpstreamProtocolError("`content` is not a string")
        if content or logprobs:
            out.append(TextDelta(index, content or "", logprobs))
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise UpstreamProtocolError("`tool_calls` is not a list")
        for call in calls:
            out.append(self._tool_call(index, call, whole))
        legacy = delta.get("function_call")
        if legacy is not None:
            if not isinstance(legacy, Mapping):
                raise UpstreamProtocolError("`function_call` is not an object")
            out.append(ToolCallDelta(index, 0, None, _opt_str(legacy, "name"), _opt_str(legacy, "arguments") or "", legacy=True))
        state = self.choices[index]
        if logprobs:
            state.tokens += len(logprobs)
        elif whole:
            state.tokens += 1 if (content or calls or legacy) else 0  # no per-token view: at least one
        elif content or calls or legacy:
            state.tokens += 1  # streamed servers send one token per chunk
        return out

    def _tool_call(self, index: int, call: object, whole: bool) -> ToolCallDelta:
        if not isinstance(call, Mapping):
            raise UpstreamProtocolError("a tool call is not an object")
        function = call.get("function") or {}
        if not isinstance(function, Mapping):
            raise UpstreamProtocolError("a tool call's `function` is not an object")
        state = self.choices[index]
        call_index = call.get("index", state.calls if whole else 0)
        if not isinstance(call_index, int) or isinstance(call_index, bool) or not 0 <= call_index < 1024:
            raise UpstreamProtocolError("a tool call index is not a small integer")
        state.calls = max(state.calls, call_index + 1)
        return ToolCallDelta(index, call_index, _opt_str(call, "id"), _opt_str(function, "name"), _opt_str(function, "arguments") or "")

    def _completion_choice(self, index: int, choice: Mapping[str, object]) -> list[EngineEvent]:
        text = choice.get("text", "")
        if not isinstance(text, str):
            raise UpstreamProtocolError("`text` is not a string")
        logprobs = _legacy_logprobs(choice.get("logprobs"))
        self.choices[index].tokens += len(logprobs) if logprobs else (1 if text else 0)
        return [TextDelta(index, text, logprobs)] if text or logprobs else []

    def _finish(self, index: int, reason: object) -> ChoiceFinished:
        allowed = CHAT_FINISH_REASONS if self.chat else COMPLETION_FINISH_REASONS
        if not isinstance(reason, str):
            raise UpstreamProtocolError("`finish_reason` is not a string")
        state = self.choices[index]
        state.finished = True
        # Servers add their own reasons (vLLM's "abort", TGI's "eos_token"): the nearest of OpenAI's.
        return ChoiceFinished(index, reason if reason in allowed else "stop", state.tokens)


def _opt_str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise UpstreamProtocolError(f"`{key}` is not a string")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UpstreamProtocolError(f"`{what}` is not a number")
    return float(value)


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UpstreamProtocolError(f"`{what}` is not a token count")
    return value


def _usage(usage: object, *, report_cached: bool) -> UsageReported:
    if not isinstance(usage, Mapping):
        raise UpstreamProtocolError("`usage` is not an object")
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return UsageReported(
        prompt_tokens=_count(usage.get("prompt_tokens", 0), "usage.prompt_tokens"),
        completion_tokens=_count(usage.get("completion_tokens", 0), "usage.completion_tokens"),
        cached_tokens=_count(cached, "cached_tokens") if cached is not None and report_cached else 0,
    )


def _piece(token: Mapping[str, object]) -> bytes:
    raw = token.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)  # type: ignore[arg-type]
    text = token.get("token")
    if not isinstance(text, str):
        raise UpstreamProtocolError("a logprob entry has no token")
    return text.encode("utf-8")


def _chat_logprobs(logprobs: object) -> tuple[TokenLogprob, ...]:
    if logprobs is None:
        return ()
    if not isinstance(logprobs, Mapping):
        raise UpstreamProtocolError("`logprobs` is not an object")
    content = logprobs.get("content") or []
    if not isinstance(content, list):
        raise UpstreamProtocolError("`logprobs.content` is not a list")
    out = []
    for token in content:
        if not isinstance(token, Mapping):
            raise UpstreamProtocolError("a logprob entry is not an object")
        top = token.get("top_logprobs") or []
        if not isinstance(top, list) or not all(isinstance(t, Mapping) for t in top):
            raise UpstreamProtocolError("`top_logprobs` is not a list of objects")
        out.append(
            TokenLogprob(
                -1,
                _piece(token),
                _number(token.get("logprob"), "logprob"),
                tuple((-1, _piece(t), _number(t.get("logprob"), "logprob")) for t in top),
            )
        )
    return tuple(out)


def _legacy_logprobs(logprobs: object) -> tuple[TokenLogprob, ...]:
    if logprobs is None:
        return ()
    if not isinstance(logprobs, Mapping):
        raise UpstreamProtocolError("`logprobs` is not an object")
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    if not (isinstance(tokens, list) and isinstance(values, list) and isinstance(tops, list)) or not (
        len(tokens) == len(values) == len(tops)
    ):
        raise UpstreamProtocolError("legacy `logprobs` lists do not line up")
    out = []
    for token, value, top in zip(tokens, values, tops):
        if not isinstance(token, str) or not (top is None or isinstance(top, Mapping)):
            raise UpstreamProtocolError("a legacy logprob entry is malformed")
        alternatives = tuple((-1, str(k).encode("utf-8"), _number(v, "top_logprobs")) for k, v in (top or {}).items())
        out.append(TokenLogprob(-1, token.encode("utf-8"), None if value is None else _number(value, "token_logprobs"), alternatives))
    return tuple(out)
