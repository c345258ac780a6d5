"""`POST /v1/chat/completions`: parse, plan, run through the pipeline, render JSON or SSE."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from modelhost.api import generation as gen
from modelhost.api.deps import app_state, principal
from modelhost.auth import Principal
from modelhost.engine import ChoiceFinished, TextDelta
from modelhost.engine.base import EngineEvent, TokenLogprob, ToolCallDelta
from modelhost.engine.chat_template import ChatTemplateError
from modelhost.engine.grammar import GrammarError
from modelhost.engine.registry import CHAT, JSON_SCHEMA, TOOLS, ServedModel
from modelhost.errors import APIError, InvalidRequest
from modelhost.limits import Admission
from modelhost.pipeline import GenerationPlan, GenerationRun
from modelhost.pipeline.admission import admitted
from modelhost.protocol import convert
from modelhost.protocol.chat import ChatCompletion, ChatCompletionRequest
from modelhost.protocol.common import ErrorResponse
from modelhost.structured import formats
from modelhost.structured import tools as tools_mod

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(principal)])


@dataclass(frozen=True)
class ChatPlan:
    generation: GenerationPlan
    tools: tools_mod.ToolPlan | None  # None, or mode "none": the text is all content


def _prepare(
    served: ServedModel, body: ChatCompletionRequest, organization: str
) -> tuple[list[int], tools_mod.ToolPlan | None, str | None, str | None]:
    """Render and tokenize the conversation and build its grammar (runs in a worker thread).

    Schema compiles take turns per `organization` (engine/grammar_compiler.py)."""
    plan = tools_mod.resolve(body)
    engine = served.engine
    native_tools = plan is not None and plan.mode != "none" and engine.template_supports_tools
    messages = convert.chat_messages(body, structured_tool_calls=native_tools)
    if plan is not None and plan.mode != "none" and not native_tools:
        messages = [{"role": "system", "content": tools_mod.fallback_system_prompt(plan)}, *messages]
    response = formats.response_grammar(body, messages, tenant=organization)
    grammar, trigger = response, None
    if plan is not None and plan.mode == "required":
        grammar = tools_mod.call_grammar(plan, tenant=organization)
    elif plan is not None and plan.mode == "auto":
        if response is not None:
            grammar = tools_mod.call_grammar(plan, alternative=response, tenant=organization)
        else:
            grammar, trigger = tools_mod.call_grammar(plan, tenant=organization), tools_mod.OPEN
    if grammar is not None:
        try:
            engine.check_grammar(grammar)
        except GrammarError as exc:
            raise InvalidRequest(str(exc), param="response_format" if plan is None else "tools") from exc
    try:  # client text is tokenized as text: only the template makes control tokens
        prompt = engine.tokenize_chat(messages, tools_mod.openai_tools(plan) if native_tools and plan else None)
    except ChatTemplateError as exc:
        raise InvalidRequest(str(exc), param="messages") from exc
    return prompt, plan, grammar, trigger


async def plan_chat(request: Request, body: ChatCompletionRequest, served: ServedModel, admission: Admission) -> ChatPlan:
    """Validate what pydantic cannot (limits that depend on the model), tokenize, size the completion.

    Runs only once the request was admitted (counted against its rate limits): everything here costs CPU.
    """
    state = app_state(request)
    if body.ignored_fields():
        logger.info("chat.completions: ignoring unsupported fields %s", ", ".join(body.ignored_fields()))
    _check_features(served, body)
    n = body.n or 1
    gen.check_n(served, n, state.settings.max_n)
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            param="top_logprobs",
            code="invalid_value",
        )
    if served.engine.forwards_requests:
        return _forwarded_plan(served, body, admission, n)
    prompt, tool_plan, grammar, trigger = await run_in_threadpool(_prepare, served, body, admission.principal.organization_id)
    max_tokens = gen.completion_budget(served, len(prompt), body.max_completion_tokens or body.max_tokens, param="messages")
    sampling = replace(
        convert.sampling_params(
            body,
            max_tokens=max_tokens,
            n_vocab=served.engine.vocab_size,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        ),
        grammar=grammar,
        grammar_trigger=trigger,
    )
    generation = GenerationPlan(
        principal=admission.principal,
        model=served,
        operation="chat.completions",
        request_id=admission.request_id,
        prompt_tokens=prompt,
        sampling=sampling,
        n=n,
        admission=admission,
    )
    return ChatPlan(generation, tool_plan if tool_plan is not None and tool_plan.mode != "none" else None)


def _check_features(served: ServedModel, body: ChatCompletionRequest) -> None:
    """Tools and structured outputs only for models configured with them (the models file's `capabilities`)."""
    if (body.tools or body.functions) and TOOLS not in served.capabilities:
        raise InvalidRequest(f"The model `{body.model}` does not support tools.", param="tools", code="unsupported_parameter")
    if body.response_format is not None and body.response_format.type != "text" and JSON_SCHEMA not in served.capabilities:
        raise InvalidRequest(
            f"The model `{body.model}` does not support response_format {body.response_format.type}.",
            param="response_format",
            code="unsupported_parameter",
        )


def _forwarded_plan(served: ServedModel, body: ChatCompletionRequest, admission: Admission, n: int) -> ChatPlan:
    """A plan for an engine that forwards to another OpenAI-compatible server: no local template or
    tokenizer; the upstream applies tools and response_format itself and checks its context window."""
    formats.check_forwarded_schemas(body)
    asked = body.max_completion_tokens or body.max_tokens
    upstream = convert.upstream_chat(body, max_tokens=asked)
    context = served.engine.context_length
    reserve = min(asked, context) if asked is not None else max(1, context - upstream.prompt_estimate)
    sampling = convert.sampling_params(
        body, max_tokens=reserve, n_vocab=convert.ANY_VOCAB, logprobs=(body.top_logprobs or 0) if body.logprobs else None
    )
    generation = GenerationPlan(
        principal=admission.principal,
        model=served,
        operation="chat.completions",
        request_id=admission.request_id,
        prompt_tokens=(),
        sampling=sampling,
        n=n,
        admission=admission,
        upstream=upstream,
    )
    return ChatPlan(generation, None)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, who: Principal = Depends(principal)
) -> Response:
    state = app_state(request)
    admission_of = admitted(state.registry, state.limiter, who, body.model, CHAT, id_prefix="chatcmpl-")
    async with admission_of as (served, admission):  # counted (429 here) before any planning work
        chat = await plan_chat(request, body, served, admission)
        run = state.pipeline.run(chat.generation)
        await run.__aenter__()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # A forwarded request starts its response once the upstream answered: its errors keep their status.
        events = await gen.started(run) if chat.generation.upstream is not None else run.events()
        response = gen.SettledStreamingResponse(_stream(run, events, chat.tools, include_usage), settle=run.settle)
        response.headers.update(run.rate_limit_headers)
        return response
    try:
        result = await gen.until_disconnect(request, gen.collect(run))
    except gen.ClientDisconnected:
        return Response(status_code=499)  # nobody is listening; the ledger has the partial usage
    finally:
        await run.settle()
    return JSONResponse(_completion(chat, result), headers=run.rate_limit_headers)


def _logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, object]:
    def one(piece: bytes, logprob: float) -> dict[str, object]:
        return {"token": gen.token_text(piece), "logprob": logprob, "bytes": list(piece)}

    content = [
        {**one(t.piece, t.logprob or 0.0), "top_logprobs": [one(p, lp) for _, p, lp in t.top]} for t in tokens
    ]
    return {"content": content, "refusal": None}


def _message(text: str, tools: tools_mod.ToolPlan | None, finish_reason: str) -> tuple[dict[str, object], str]:
    """The assistant message for `text`, with tool calls split out; and the finish reason to report."""
    message: dict[str, object] = {"role": "assistant", "content": text, "refusal": None}
    if tools is None:
        return message, finish_reason
    parser = tools_mod.ToolCallParser()
    pieces = parser.feed(text) + parser.finish(drop_unfinished_call=True)
    content = "".join(p for p in pieces if isinstance(p, str)).strip()
    if not parser.calls:
        return message, finish_reason
    message["content"] = content or None
    if tools.legacy:
        call = parser.calls[0]
        message["function_call"] = {"name": call.name, "arguments": call.arguments}
        return message, "function_call"
    message["tool_calls"] = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in parser.calls
    ]
    # Complete calls are the answer even when max_tokens cut a further call short (it is dropped).
    return message, "tool_calls"


def _with_upstream_calls(message: dict[str, object], choice: gen.ChoiceResult) -> dict[str, object]:
    """The tool calls an upstream made, in OpenAI's message shape."""
    if choice.tool_calls:
        message["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(choice.tool_calls.items())
        ]
    if choice.function_call is not None:
        message["function_call"] = dict(choice.function_call)
    if (choice.tool_calls or choice.function_call) and not choice.text:
        message["content"] = None
    return message


def _tool_delta(event: ToolCallDelta) -> dict[str, object]:
    function = {k: v for k, v in (("name", event.name), ("arguments", event.arguments)) if v is not None}
    if event.legacy:
        return {"function_call": function}
    call: dict[str, object] = {"index": event.call_index}
    if event.id is not None:
        call.update(id=event.id, type="function")
    call["function"] = function
    return {"tool_calls": [call]}


def _completion(chat: ChatPlan, result: gen.RunResult) -> dict[str, object]:
    plan = chat.generation
    wants_logprobs = plan.sampling.logprobs is not None
    choices = []
    for i, choice in enumerate(result.choices):
        message, finish_reason = _message(choice.text, chat.tools, choice.finish_reason)
        message = _with_upstream_calls(message, choice)
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": _logprobs(choice.logprobs) if wants_logprobs else None,
                "finish_reason": finish_reason,
            }
        )
    return {
        "id": plan.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model.id,
        "system_fingerprint": plan.model.fingerprint,
        "choices": choices,
        "usage": gen.usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens),
    }


async def _stream(
    run: GenerationRun, events: AsyncIterator[EngineEvent], tools: tools_mod.ToolPlan | None, include_usage: bool
) -> AsyncIterator[bytes]:
    plan = run.plan
    created = int(time.time())
    wants_logprobs = plan.sampling.logprobs is not None
    parsers = [tools_mod.ToolCallParser() for _ in range(plan.n)] if tools else []

    def chunk(choices: list[dict[str, object]], **extra: object) -> bytes:
        payload: dict[str, object] = {
            "id": plan.request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.model.id,
            "system_fingerprint": plan.model.fingerprint,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = None
        payload.update(extra)
        return gen.sse(payload)

    def choice(index: int, delta: dict[str, object], finish: str | None = None, logprobs: object = None) -> dict[str, object]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def pieces(index: int, items: list[str | tools_mod.ParsedCall], logprobs: object) -> list[bytes]:
        out = []
        for item in items:
            if isinstance(item, str):
                out.append(chunk([choice(index, {"content": item}, logprobs=logprobs)]))
            elif tools is not None and tools.legacy:
                out.append(chunk([choice(index, {"function_call": {"name": item.name, "arguments": item.arguments}})]))
            else:
                call = {
                    "index": len(parsers[index].calls) - 1,
                    "id": item.id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                out.append(chunk([choice(index, {"tool_calls": [call]})]))
            logprobs = None
        return out

    try:
        for i in range(plan.n):
            yield chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})])
        async for event in events:
            if isinstance(event, ToolCallDelta):
                yield chunk([choice(event.index, _tool_delta(event))])
            elif isinstance(event, TextDelta):
                logprobs = _logprobs(event.logprobs) if wants_logprobs else None
                if not parsers:
                    yield chunk([choice(event.index, {"content": event.text}, logprobs=logprobs)])
                    continue
                for data in pieces(event.index, parsers[event.index].feed(event.text), logprobs):
                    yield data
            elif isinstance(event, ChoiceFinished):
                reason = event.reason
                if parsers:
                    for data in pieces(event.index, parsers[event.index].finish(drop_unfinished_call=True), None):
                        yield data
                    if parsers[event.index].calls:
                        reason = "function_call" if tools is not None and tools.legacy else "tool_calls"
                yield chunk([choice(event.index, {}, reason)])
        if (unrecorded := await gen.settle_before_done([run])) is not None:
            yield unrecorded
            return
        if include_usage:
            yield chunk([], usage=gen.usage(run.prompt_tokens, run.completion_tokens, run.cached_tokens))
        yield gen.SSE_DONE
    except APIError as exc:
        # Headers are gone already: report the failure as an error event, then close.
        yield gen.sse(exc.body())
    finally:
        await run.settle()
