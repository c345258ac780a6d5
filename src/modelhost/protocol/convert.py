"""Wire types → plain engine inputs. The one place where request fields become sampling settings."""

from __future__ import annotations

from typing import Protocol

from modelhost.engine.base import SamplingParams
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


def chat_messages(request: ChatCompletionRequest) -> list[dict[str, object]]:
    """Messages as the chat template expects them: role + string content."""
    rendered: list[dict[str, object]] = []
    for i, message in enumerate(request.messages):
        param = f"messages[{i}].content"
        role = message.role
        if isinstance(message, DeveloperMessage):
            role = "system"  # developer messages are system messages for models that predate them
        if isinstance(message, AssistantMessage):
            content = _text(message.content, param) or (message.refusal or "")
        elif isinstance(message, FunctionMessage):
            role, content = "tool", message.content or ""
        else:
            content = _text(message.content, param)
        entry: dict[str, object] = {"role": role, "content": content}
        if isinstance(message, ToolMessage):
            entry["tool_call_id"] = message.tool_call_id
        rendered.append(entry)
    return rendered


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
