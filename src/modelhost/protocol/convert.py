"""Wire requests → the pipeline's neutral inputs (`pipeline.inputs`).

The one place where a chat or legacy completions request's fields become what planning takes;
what only the wire format knows (content parts, the deprecated `functions`, which fields may be
combined) is checked here, with the field names the client sent.
"""

from __future__ import annotations

from modelhost.errors import InvalidRequest
from modelhost.pipeline.inputs import (
    CallRecord,
    ChatInput,
    Function,
    OutputFormat,
    Params,
    Sampling,
    TextInput,
    Tools,
    Turn,
)
from modelhost.protocol.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    Content,
    FunctionDefinition,
    FunctionMessage,
    NamedFunction,
    NamedToolChoice,
    OtherPart,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    TextPart,
    ToolMessage,
)
from modelhost.protocol.completions import CompletionRequest


def content_text(content: Content | None, param: str) -> str:
    """Text content, or text parts joined; 400 for parts this model cannot read (images, audio, files)."""
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


def _turns(request: ChatCompletionRequest) -> tuple[Turn, ...]:
    turns: list[Turn] = []
    for i, message in enumerate(request.messages):
        param = f"messages[{i}].content"
        if isinstance(message, AssistantMessage):
            calls = tuple(CallRecord(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or [])
            legacy = message.function_call
            turns.append(
                Turn(
                    "assistant",
                    content_text(message.content, param) or (message.refusal or ""),
                    calls=calls,
                    legacy_call=CallRecord("", legacy.name, legacy.arguments) if legacy is not None else None,
                )
            )
        elif isinstance(message, FunctionMessage):
            turns.append(Turn("tool", message.content or "", name=message.name))
        elif isinstance(message, ToolMessage):
            turns.append(Turn("tool", content_text(message.content, param), tool_call_id=message.tool_call_id))
        else:
            turns.append(Turn(message.role, content_text(message.content, param)))
    return tuple(turns)


def _function(f: FunctionDefinition) -> Function:
    return Function(f.name, f.description, f.parameters, f.strict)


def _tools(request: ChatCompletionRequest) -> tuple[Tools | None, Params]:
    if request.tools and request.functions:
        raise InvalidRequest("Send either 'tools' or the deprecated 'functions', not both.", param="functions", code="invalid_value")
    if request.functions:
        choice = request.function_call
        named = isinstance(choice, NamedFunction)
        tools = Tools(
            tuple(_function(f) for f in request.functions),
            choice.name if isinstance(choice, NamedFunction) else choice,
            named=named,
            parallel=False,
            legacy=True,
        )
        return tools, Params(tools="functions", tool_choice="function_call")
    choice_ = request.tool_choice
    if not request.tools and choice_ is None:
        return None, Params()
    tools = Tools(
        tuple(_function(t.function) for t in request.tools or []),
        choice_.function.name if isinstance(choice_, NamedToolChoice) else choice_,
        named=isinstance(choice_, NamedToolChoice),
        parallel=request.parallel_tool_calls is not False,
    )
    return tools, Params()


def _output(request: ChatCompletionRequest) -> OutputFormat | None:
    fmt = request.response_format
    if isinstance(fmt, ResponseFormatJsonSchema):
        return OutputFormat("json_schema", fmt.json_schema.name, fmt.json_schema.schema_, fmt.json_schema.strict)
    if isinstance(fmt, ResponseFormatJsonObject):
        return OutputFormat("json_object")
    return OutputFormat("text") if fmt is not None else None


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _sampling(request: ChatCompletionRequest | CompletionRequest) -> Sampling:
    return Sampling(
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        logit_bias=dict(request.logit_bias or {}),
        stop=stop_sequences(request.stop),
    )


def chat_input(request: ChatCompletionRequest) -> ChatInput:
    """A chat completions request as planning takes it."""
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options", code="invalid_value"
        )
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequest(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            param="top_logprobs",
            code="invalid_value",
        )
    tools, params = _tools(request)
    return ChatInput(
        model=request.model,
        turns=_turns(request),
        sampling=_sampling(request),
        max_tokens=request.max_completion_tokens or request.max_tokens,
        n=request.n or 1,
        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        tools=tools,
        output=_output(request),
        params=params,
    )


def text_input(request: CompletionRequest) -> TextInput:
    """A legacy completions request as planning takes it: one entry per prompt."""
    n = request.n or 1
    best_of = request.best_of or n
    if best_of < n:
        raise InvalidRequest("best_of must be greater than or equal to n.", param="best_of", code="invalid_value")
    if request.stream and best_of > n:
        raise InvalidRequest("Cannot stream results when best_of is greater than n.", param="best_of", code="invalid_value")
    if request.suffix:
        raise InvalidRequest(
            "suffix is not supported by this model: it cannot insert text between a prefix and a suffix.",
            param="suffix",
            code="unsupported",
        )
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options", code="invalid_value"
        )
    prompts: list[str | tuple[int, ...]] = []
    prompt = request.prompt
    if isinstance(prompt, str):
        prompts.append(prompt)
    elif all(isinstance(t, int) for t in prompt):  # one prompt of token ids
        prompts.append(tuple(t for t in prompt if isinstance(t, int)))
    else:
        for item in prompt:
            prompts.append(item if isinstance(item, str) else tuple(item) if isinstance(item, list) else (item,))
    return TextInput(
        model=request.model,
        prompts=tuple(prompts),
        sampling=_sampling(request),
        max_tokens=request.max_tokens,
        n=n,
        best_of=best_of,
        logprobs=request.logprobs,
        echo=bool(request.echo),
        stream=bool(request.stream),
    )
