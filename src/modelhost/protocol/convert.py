"""Wire types → plain engine inputs. The one place where request fields become sampling settings."""

from __future__ import annotations

import json
import math
from typing import Protocol

from pydantic import BaseModel

from modelhost.engine.base import SamplingParams, UpstreamInput
from modelhost.errors import InvalidRequest
from modelhost.protocol.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    Content,
    DeveloperMessage,
    FunctionMessage,
    OtherPart,
    TextPart,
    ToolMessage,
)


def _text(content: Content | None, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for i, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, OtherPart) and part.type == "refusal":
            texts.append(str((part.model_extra or {}).get("refusal", "")))
        else:
            raise InvalidRequest(
                f"Invalid content type. {part.type} is not supported by this model; send text parts only.",
                param=f"{param}[{i}].type",
                code="invalid_value",
            )
    return "".join(texts)


def chat_messages(request: ChatCompletionRequest, *, structured_tool_calls: bool = False) -> list[dict[str, object]]:
    """Messages as the chat template expects them: role + string content.

    Earlier tool calls are written into the assistant's text in the `<tool_call>` convention, or,
    for templates that render tools themselves (`structured_tool_calls`), also passed as
    `tool_calls` with parsed arguments.
    """
    from modelhost.structured.tools import render_call

    rendered: list[dict[str, object]] = []
    for i, message in enumerate(request.messages):
        param = f"messages[{i}].content"
        role = message.role
        entry: dict[str, object] = {}
        if isinstance(message, DeveloperMessage):
            role = "system"  # developer messages are system messages for models that predate them
        if isinstance(message, AssistantMessage):
            content = _text(message.content, param) or (message.refusal or "")
            calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
            if message.function_call is not None:
                calls.append((message.function_call.name, message.function_call.arguments))
            if calls and structured_tool_calls:
                entry["tool_calls"] = [
                    {"type": "function", "function": {"name": name, "arguments": _json_or_text(arguments)}}
                    for name, arguments in calls
                ]
            elif calls:
                content += "".join(render_call(name, arguments) for name, arguments in calls)
        elif isinstance(message, FunctionMessage):
            role, content = "tool", message.content or ""
            entry["name"] = message.name
        else:
            content = _text(message.content, param)
        entry = {"role": role, "content": content, **entry}
        if isinstance(message, ToolMessage):
            entry["tool_call_id"] = message.tool_call_id
        rendered.append(entry)
    return rendered


def _json_or_text(arguments: str) -> object:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


class SamplingFields(Protocol):
    """The sampling fields chat and legacy completion requests share."""

    temperature: float | None
    top_p: float | None
    seed: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    logit_bias: dict[str, float] | None
    stop: str | list[str] | None


def sampling_params(
    request: SamplingFields,
    *,
    max_tokens: int,
    n_vocab: int,
    logprobs: int | None = None,
    prompt_logprobs: bool = False,
) -> SamplingParams:
    """The request's sampling settings with OpenAI's defaults (temperature 1, top_p 1)."""
    bias: dict[int, float] = {}
    for key, value in (request.logit_bias or {}).items():
        token = int(key)
        if token >= n_vocab:
            raise InvalidRequest(
                f"Invalid key in 'logit_bias': {key} is not a token id of this model (vocabulary size {n_vocab}).",
                param="logit_bias",
                code="invalid_value",
            )
        bias[token] = float(value)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias=bias,
        stop=stop_sequences(request.stop),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


# -- requests for engines that forward to another OpenAI-compatible server --------------------

ANY_VOCAB = 2**31 - 1  # a forwarded request's token ids are checked by the server that knows the vocabulary
# Fields a forwarded request carries; everything else (unknown fields, `user`, `stream`, `n`,
# `model`, `best_of`, `suffix`, `echo` for chat) is never sent upstream.
_CHAT_FIELDS = (
    "messages", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias",
    "logprobs", "top_logprobs", "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions",
    "function_call",
)
_COMPLETION_FIELDS = (
    "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "echo",
    "max_tokens",
)


def declared(value: object) -> object:
    """`value` as JSON data with only the fields our wire types declare: unknown fields are dropped
    at every depth (a forwarded request never carries what we did not validate)."""
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return {
            (info.alias or name): declared(getattr(value, name))
            for name, info in fields.items()
            if name in value.model_fields_set or getattr(value, name) is not None  # set, or a default like type="function"
        }
    if isinstance(value, list):
        return [declared(v) for v in value]
    if isinstance(value, dict):
        return {k: declared(v) for k, v in value.items()}
    return value


def estimate_tokens(payload: object) -> int:
    """About four bytes of JSON per token: sizes the limit reservation until the upstream reports usage."""
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def upstream_chat(request: ChatCompletionRequest, *, max_tokens: int | None) -> UpstreamInput:
    """The chat request as an OpenAI-compatible upstream gets it (validated fields, re-serialized)."""
    chat_messages(request)  # the same content checks as for a local model (text parts only)
    data = declared(request)
    assert isinstance(data, dict)
    body = {name: data[name] for name in _CHAT_FIELDS if name in data and data[name] is not None}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens  # the name every server knows (max_completion_tokens is newer)
    prompt = {k: body[k] for k in ("messages", "tools", "functions", "response_format") if k in body}
    return UpstreamInput("chat/completions", body, estimate_tokens(prompt))


def upstream_completion(request: BaseModel, prompt: str | list[int], *, logprobs: int | None) -> UpstreamInput:
    """One prompt of a legacy completions request as an upstream gets it; `logprobs` as the plan needs them."""
    data = declared(request)
    assert isinstance(data, dict)
    body: dict[str, object] = {name: data[name] for name in _COMPLETION_FIELDS if name in data and data[name] is not None}
    body["prompt"] = prompt
    if logprobs is not None:
        body["logprobs"] = logprobs
    estimate = len(prompt) if isinstance(prompt, list) else estimate_tokens(prompt)
    return UpstreamInput("completions", body, max(1, estimate))
