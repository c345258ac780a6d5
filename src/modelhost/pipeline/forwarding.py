"""Neutral inputs → the request body an OpenAI-compatible upstream takes (engines that `forwards_requests`).

The body is rebuilt from what planning validated, never copied from the client's JSON: unknown
fields, `user`, `model`, `stream`, `stream_options` and `n` are never sent (the engine sets the
ones it needs). Chat inputs become a chat completions request whatever format they came in.
"""

from __future__ import annotations

import json
import math

from modelhost.engine.base import UpstreamInput
from modelhost.pipeline.inputs import CallRecord, ChatInput, OutputFormat, Sampling, TextInput, Tools, Turn

ANY_VOCAB = 2**31 - 1  # a forwarded request's token ids are checked by the server that knows the vocabulary


def estimate_tokens(payload: object) -> int:
    """About four bytes of JSON per token: sizes the limit reservation until the upstream reports usage."""
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def _sampling(sampling: Sampling) -> dict[str, object]:
    fields: dict[str, object] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stop": list(sampling.stop) or None,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "logit_bias": dict(sampling.logit_bias) or None,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _call(call: CallRecord) -> dict[str, object]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _message(turn: Turn) -> dict[str, object]:
    if turn.role == "tool" and turn.tool_call_id is None:
        return {"role": "function", "name": turn.name, "content": turn.content}
    message: dict[str, object] = {"role": turn.role, "content": turn.content}
    if turn.calls:
        message["tool_calls"] = [_call(c) for c in turn.calls]
    if turn.legacy_call is not None:
        message["function_call"] = {"name": turn.legacy_call.name, "arguments": turn.legacy_call.arguments}
    if (turn.calls or turn.legacy_call) and not turn.content:
        message["content"] = None
    if turn.tool_call_id is not None:
        message["tool_call_id"] = turn.tool_call_id
    return message


def _function(f: object) -> dict[str, object]:
    fields = {name: getattr(f, name) for name in ("name", "description", "parameters", "strict")}
    return {k: (dict(v) if k == "parameters" else v) for k, v in fields.items() if v is not None}


def _tools(tools: Tools) -> dict[str, object]:
    functions = [_function(f) for f in tools.functions]
    if tools.legacy:
        out: dict[str, object] = {"functions": functions}
        if tools.choice is not None:
            out["function_call"] = {"name": tools.choice} if tools.named else tools.choice
        return out
    out = {"tools": [{"type": "function", "function": f} for f in functions]} if functions else {}
    if tools.choice is not None:
        out["tool_choice"] = {"type": "function", "function": {"name": tools.choice}} if tools.named else tools.choice
    if functions and not tools.parallel:
        out["parallel_tool_calls"] = False
    return out


def _response_format(output: OutputFormat) -> dict[str, object]:
    if output.kind != "json_schema":
        return {"type": output.kind}
    schema: dict[str, object] = {"name": output.name}
    if output.schema is not None:
        schema["schema"] = dict(output.schema)
    if output.strict is not None:
        schema["strict"] = output.strict
    return {"type": "json_schema", "json_schema": schema}


def upstream_chat(chat: ChatInput, *, max_tokens: int | None) -> UpstreamInput:
    """The conversation as an OpenAI-compatible upstream's chat completions request."""
    body: dict[str, object] = {"messages": [_message(t) for t in chat.turns], **_sampling(chat.sampling)}
    if chat.logprobs is not None:
        body.update(logprobs=True, top_logprobs=chat.logprobs)
    if chat.tools is not None:
        body.update(_tools(chat.tools))
    if chat.output is not None:
        body["response_format"] = _response_format(chat.output)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens  # the name every server knows (max_completion_tokens is newer)
    prompt = {k: body[k] for k in ("messages", "tools", "functions", "response_format") if k in body}
    return UpstreamInput("chat/completions", body, estimate_tokens(prompt))


def upstream_completion(text: TextInput, prompt: str | tuple[int, ...], *, logprobs: int | None) -> UpstreamInput:
    """One prompt of a legacy completions input as an upstream gets it; `logprobs` as the plan needs them."""
    body: dict[str, object] = _sampling(text.sampling)
    if text.max_tokens is not None:
        body["max_tokens"] = text.max_tokens
    if text.echo:
        body["echo"] = True
    body["prompt"] = list(prompt) if isinstance(prompt, tuple) else prompt
    if logprobs is not None:
        body["logprobs"] = logprobs
    estimate = len(prompt) if isinstance(prompt, tuple) else estimate_tokens(prompt)
    return UpstreamInput("completions", body, max(1, estimate))
