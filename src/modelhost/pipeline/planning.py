"""Planning: a neutral input (`pipeline.inputs`) and its admission → the plans the pipeline runs.

The one place that looks at the model for a request: its capabilities, its chat template, its
tokenizer, its grammar support and its context window. Nothing here knows HTTP or a wire format,
so chat completions, legacy completions, responses, batch lines and the console plan alike::

    async with admitted(registry, limiter, who, chat.model, CHAT, id_prefix="chatcmpl-") as (served, admission):
        plan = await plan_chat(chat, served, admission, max_n=settings.max_n)
        run = await pipeline.run(plan.generation).__aenter__()

Planning runs only once the request was admitted (counted against its rate limits): rendering,
tokenizing and compiling a schema cost CPU. The CPU work runs in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from anyio import to_thread

from modelhost.engine.base import SamplingParams, UpstreamInput
from modelhost.engine.chat_template import ChatTemplateError
from modelhost.engine.grammar import GrammarError
from modelhost.engine.registry import JSON_SCHEMA, TOOLS, ServedModel
from modelhost.errors import ContextLengthExceeded, InvalidRequest
from modelhost.limits import Admission
from modelhost.pipeline.forwarding import ANY_VOCAB, upstream_chat, upstream_completion
from modelhost.pipeline.generation import GenerationPlan
from modelhost.pipeline.inputs import ChatInput, Sampling, TextInput, Turn
from modelhost.structured import formats
from modelhost.structured import tools as tools_mod


@dataclass(frozen=True)
class ChatPlan:
    generation: GenerationPlan
    tools: tools_mod.ToolPlan | None  # None, or mode "none": the text is all content


def check_n(served: ServedModel, n: int, max_n: int, *, param: str = "n") -> None:
    limit = min(max_n, served.engine.max_n) if served.engine is not None else max_n
    if n > limit:
        raise InvalidRequest(f"Invalid value for '{param}': at most {limit} per request.", param=param, code="invalid_value")


def completion_budget(served: ServedModel, prompt_tokens: int, asked: int | None, *, param: str) -> int:
    """Tokens the completion may have: what was asked, clamped to the context left; 400 if none is left."""
    assert served.engine is not None
    context = served.engine.context_length
    if prompt_tokens >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, your {param} resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the {param}.",
            param=param,
        )
    room = context - prompt_tokens
    return room if asked is None else min(asked, room)


def sampling_params(
    sampling: Sampling, *, max_tokens: int, n_vocab: int, logprobs: int | None = None, prompt_logprobs: bool = False
) -> SamplingParams:
    """The input's sampling settings with OpenAI's defaults (temperature 1, top_p 1)."""
    bias: dict[int, float] = {}
    for key, value in sampling.logit_bias.items():
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
        temperature=1.0 if sampling.temperature is None else sampling.temperature,
        top_p=1.0 if sampling.top_p is None else sampling.top_p,
        seed=sampling.seed,
        presence_penalty=sampling.presence_penalty or 0.0,
        frequency_penalty=sampling.frequency_penalty or 0.0,
        logit_bias=bias,
        stop=sampling.stop,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


# -- chat ----------------------------------------------------------------------------------------


def _template_message(turn: Turn, structured_tool_calls: bool) -> dict[str, object]:
    """One turn as chat templates read it: role + string content.

    Earlier tool calls are written into the assistant's text in the `<tool_call>` convention, or,
    for templates that render tools themselves (`structured_tool_calls`), also passed as
    `tool_calls` with parsed arguments.
    """
    role = "system" if turn.role == "developer" else turn.role  # for models that predate developer messages
    content = turn.content
    entry: dict[str, object] = {}
    calls = [*turn.calls, *([turn.legacy_call] if turn.legacy_call is not None else [])]
    if calls and structured_tool_calls:
        entry["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": tools_mod.json_or_text(c.arguments)}} for c in calls
        ]
    elif calls:
        content += "".join(tools_mod.render_call(c.name, c.arguments) for c in calls)
    if turn.role == "tool" and turn.tool_call_id is None:
        entry["name"] = turn.name
    message: dict[str, object] = {"role": role, "content": content, **entry}
    if turn.tool_call_id is not None:
        message["tool_call_id"] = turn.tool_call_id
    return message


def conversation(chat: ChatInput, tools: tools_mod.ToolPlan | None, *, native_tools: bool) -> list[dict[str, object]]:
    """The messages the model's template renders: the turns, and the fallback tool prompt for a
    template that cannot render tools itself."""
    messages = [_template_message(t, native_tools) for t in chat.turns]
    if tools is not None and tools.mode != "none" and not native_tools:
        messages = [{"role": "system", "content": tools_mod.fallback_system_prompt(tools)}, *messages]
    return messages


def _check_features(served: ServedModel, chat: ChatInput) -> None:
    """Tools and structured outputs only for models configured with them (the models file's `capabilities`)."""
    if chat.tools is not None and chat.tools.functions and TOOLS not in served.capabilities:
        raise InvalidRequest(
            f"The model `{chat.model}` does not support tools.", param=chat.params.tools, code="unsupported_parameter"
        )
    if chat.output is not None and chat.output.kind != "text" and JSON_SCHEMA not in served.capabilities:
        raise InvalidRequest(
            f"The model `{chat.model}` does not support {chat.params.response_format} {chat.output.kind}.",
            param=chat.params.response_format,
            code="unsupported_parameter",
        )


def _prepare(
    served: ServedModel, chat: ChatInput, organization: str
) -> tuple[list[int], tools_mod.ToolPlan | None, str | None, str | None]:
    """Render and tokenize the conversation and build its grammar (runs in a worker thread).

    Schema compiles take turns per `organization` (engine/grammar_compiler.py)."""
    params = chat.params
    plan = tools_mod.resolve(chat.tools, params)
    engine = served.engine
    assert engine is not None
    native_tools = plan is not None and plan.mode != "none" and engine.template_supports_tools
    messages = conversation(chat, plan, native_tools=native_tools)
    response = formats.response_grammar(chat.output, messages, params, tenant=organization)
    grammar, trigger = response, None
    if plan is not None and plan.mode == "required":
        grammar = tools_mod.call_grammar(plan, tenant=organization, param=params.tools)
    elif plan is not None and plan.mode == "auto":
        if response is not None:
            grammar = tools_mod.call_grammar(plan, alternative=response, tenant=organization, param=params.tools)
        else:
            grammar, trigger = tools_mod.call_grammar(plan, tenant=organization, param=params.tools), tools_mod.OPEN
    if grammar is not None:
        try:
            engine.check_grammar(grammar)
        except GrammarError as exc:
            raise InvalidRequest(str(exc), param=params.response_format if plan is None else params.tools) from exc
    try:  # client text is tokenized as text: only the template makes control tokens
        prompt = engine.tokenize_chat(messages, tools_mod.openai_tools(plan) if native_tools and plan else None)
    except ChatTemplateError as exc:
        raise InvalidRequest(str(exc), param=params.messages) from exc
    return prompt, plan, grammar, trigger


async def plan_chat(
    chat: ChatInput, served: ServedModel, admission: Admission, *, max_n: int, operation: str = "chat.completions"
) -> ChatPlan:
    """Check what depends on the model, render and tokenize the conversation, size the completion.

    `operation` names the endpoint in the ledger (`responses` for the Responses API)."""
    assert served.engine is not None, "plan chat only for a model that generates"
    _check_features(served, chat)
    check_n(served, chat.n, max_n)
    if served.engine.forwards_requests:
        return _forwarded_chat(chat, served, admission, operation)
    prompt, tool_plan, grammar, trigger = await to_thread.run_sync(_prepare, served, chat, admission.principal.organization_id)
    max_tokens = completion_budget(served, len(prompt), chat.max_tokens, param=chat.params.messages)
    sampling = replace(
        sampling_params(chat.sampling, max_tokens=max_tokens, n_vocab=served.engine.vocab_size, logprobs=chat.logprobs),
        grammar=grammar,
        grammar_trigger=trigger,
    )
    generation = GenerationPlan(
        principal=admission.principal,
        model=served,
        operation=operation,
        request_id=admission.request_id,
        prompt_tokens=prompt,
        sampling=sampling,
        n=chat.n,
        admission=admission,
    )
    return ChatPlan(generation, tool_plan if tool_plan is not None and tool_plan.mode != "none" else None)


def _forwarded_chat(chat: ChatInput, served: ServedModel, admission: Admission, operation: str) -> ChatPlan:
    """A plan for an engine that forwards to another OpenAI-compatible server: no local template or
    tokenizer; the upstream applies tools and the output format itself and checks its context window."""
    assert served.engine is not None
    formats.check_forwarded_schemas(chat.output, chat.tools.functions if chat.tools else (), chat.params)
    upstream = upstream_chat(chat, max_tokens=chat.max_tokens)
    context = served.engine.context_length
    reserve = min(chat.max_tokens, context) if chat.max_tokens is not None else max(1, context - upstream.prompt_estimate)
    sampling = sampling_params(chat.sampling, max_tokens=reserve, n_vocab=ANY_VOCAB, logprobs=chat.logprobs)
    generation = GenerationPlan(
        principal=admission.principal,
        model=served,
        operation=operation,
        request_id=admission.request_id,
        prompt_tokens=(),
        sampling=sampling,
        n=chat.n,
        admission=admission,
        upstream=upstream,
    )
    return ChatPlan(generation, None)


# -- raw prompts (legacy completions) ---------------------------------------------------------------


def _tokenized(served: ServedModel, prompts: tuple[str | tuple[int, ...], ...]) -> list[list[int]]:
    """Every prompt as token ids (strings are tokenized by the model's tokenizer); 400 for ids outside
    the vocabulary."""
    engine = served.engine
    assert engine is not None
    out: list[list[int]] = []
    for i, item in enumerate(prompts):
        if isinstance(item, str):
            # A legacy prompt is the caller's raw model input, not a conversation: its control strings
            # are parsed (OpenAI's default prompt is "<|endoftext|>", the separator token), as token-id
            # prompts can hold any id. Untrusted end-user text belongs in chat messages, where it is text.
            tokens = engine.tokenize(item)
        else:
            tokens = list(item)
            bad = next((t for t in tokens if not 0 <= t < engine.vocab_size), None)
            if bad is not None:
                param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
                raise InvalidRequest(
                    f"Invalid token id {bad} in '{param}': this model's vocabulary has {engine.vocab_size} tokens.",
                    param=param,
                    code="invalid_value",
                )
        out.append(tokens or [engine.start_token])
    return out


def _text_logprobs(text: TextInput) -> int | None:
    # best_of ranks candidates by mean logprob, so it needs logprobs even when not returned.
    return text.logprobs if text.logprobs is not None else (0 if text.best_of > text.n else None)


async def plan_text(text: TextInput, served: ServedModel, admission: Admission, *, max_n: int) -> list[GenerationPlan]:
    """One plan per prompt, all under the one admission: the request counts once, whatever its prompts."""
    assert served.engine is not None, "plan text only for a model that generates"
    check_n(served, text.best_of, max_n, param="best_of" if text.best_of > text.n else "n")
    logprobs = _text_logprobs(text)
    plans = []
    if served.engine.forwards_requests:
        for i, prompt in enumerate(text.prompts):
            if isinstance(prompt, tuple) and any(t < 0 for t in prompt):
                param = "prompt" if len(text.prompts) == 1 else f"prompt[{i}]"
                raise InvalidRequest(f"Invalid token id in '{param}': token ids are not negative.", param=param, code="invalid_value")
            upstream = upstream_completion(text, prompt, logprobs=logprobs)
            context = served.engine.context_length
            reserve = min(text.max_tokens, context) if text.max_tokens is not None else max(1, context - upstream.prompt_estimate)
            sampling = sampling_params(text.sampling, max_tokens=reserve, n_vocab=ANY_VOCAB, logprobs=logprobs)
            plans.append(_text_plan(text, served, admission, i, (), sampling, upstream))
        return plans
    prompts = await to_thread.run_sync(_tokenized, served, text.prompts)
    for i, tokens in enumerate(prompts):
        max_tokens = completion_budget(served, len(tokens), text.max_tokens, param="prompt")
        sampling = sampling_params(
            text.sampling,
            max_tokens=max_tokens,
            n_vocab=served.engine.vocab_size,
            logprobs=logprobs,
            prompt_logprobs=bool(text.echo and text.logprobs is not None),
        )
        plans.append(_text_plan(text, served, admission, i, tokens, sampling, None))
    return plans


def _text_plan(
    text: TextInput,
    served: ServedModel,
    admission: Admission,
    i: int,
    tokens: list[int] | tuple[()],
    sampling: SamplingParams,
    upstream: UpstreamInput | None,
) -> GenerationPlan:
    request_id = admission.request_id if len(text.prompts) == 1 else f"{admission.request_id}-{i}"
    return GenerationPlan(
        admission.principal,
        served,
        "completions",
        request_id,
        tokens,
        sampling,
        text.best_of,
        admission=admission,
        upstream=upstream,
        part=i,
    )
