"""`POST /v1/completions` (legacy): one plan per prompt through the same pipeline as chat.

`n` choices per prompt, `best_of` candidates ranked by mean token logprob, `echo`, `logprobs`
(the legacy shape: tokens, token_logprobs, top_logprobs, text_offset) and streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from modelhost.api import generation as gen
from modelhost.api.deps import app_state, principal
from modelhost.auth import Principal
from modelhost.engine import ChoiceFinished, TextDelta
from modelhost.engine.base import EngineEvent, TokenLogprob
from modelhost.engine.registry import COMPLETIONS, ServedModel
from modelhost.errors import APIError, InvalidRequest
from modelhost.limits import Admission
from modelhost.pipeline import GenerationPlan, GenerationRun
from modelhost.pipeline.admission import admitted
from modelhost.protocol import convert
from modelhost.protocol.common import ErrorResponse
from modelhost.protocol.completions import Completion, CompletionRequest

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(principal)])


def _raw_prompts(prompt: object) -> list[str | list[int]]:
    """Every accepted prompt form → one entry per prompt: a string or a list of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)  # type: ignore[call-overload]


def _prompts(served: ServedModel, prompt: object) -> list[list[int]]:
    """Every accepted prompt form → token lists (strings are tokenized by the model's tokenizer)."""
    engine = served.engine
    raw: list[object] = list(_raw_prompts(prompt))
    prompts: list[list[int]] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            # A legacy prompt is the caller's raw model input, not a conversation: its control strings
            # are parsed (OpenAI's default prompt is "<|endoftext|>", the separator token), as token-id
            # prompts can hold any id. Untrusted end-user text belongs in chat messages, where it is text.
            tokens = engine.tokenize(item)
        else:
            tokens = list(item)  # type: ignore[call-overload]
            bad = next((t for t in tokens if not 0 <= t < engine.vocab_size), None)
            if bad is not None:
                param = "prompt" if len(raw) == 1 else f"prompt[{i}]"
                raise InvalidRequest(f"Invalid token id {bad} in '{param}': this model's vocabulary has {engine.vocab_size} tokens.", param=param, code="invalid_value")
        prompts.append(tokens or [engine.start_token])
    return prompts


def _validate(body: CompletionRequest) -> tuple[int, int]:
    n = body.n or 1
    best_of = body.best_of or n
    if best_of < n:
        raise InvalidRequest("best_of must be greater than or equal to n.", param="best_of", code="invalid_value")
    if body.stream and best_of > n:
        raise InvalidRequest("Cannot stream results when best_of is greater than n.", param="best_of", code="invalid_value")
    if body.suffix:
        raise InvalidRequest(
            "suffix is not supported by this model: it cannot insert text between a prefix and a suffix.",
            param="suffix",
            code="unsupported",
        )
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options", code="invalid_value"
        )
    return n, best_of


async def plan_completions(
    request: Request, body: CompletionRequest, served: ServedModel, admission: Admission
) -> list[GenerationPlan]:
    """One plan per prompt, all under the one admission: the request counts once, whatever its prompts."""
    state = app_state(request)
    if body.ignored_fields():
        logger.info("completions: ignoring unsupported fields %s", ", ".join(body.ignored_fields()))
    n, best_of = _validate(body)
    gen.check_n(served, best_of, state.settings.max_n, param="best_of" if best_of > n else "n")
    response_id, who = admission.request_id, admission.principal
    if served.engine.forwards_requests:
        return _forwarded_plans(served, body, admission, n, best_of)
    prompts = await run_in_threadpool(_prompts, served, body.prompt)
    plans = []
    for i, prompt in enumerate(prompts):
        max_tokens = gen.completion_budget(served, len(prompt), body.max_tokens, param="prompt")
        # best_of ranks candidates by mean logprob, so it needs logprobs even when not returned.
        logprobs = body.logprobs if body.logprobs is not None else (0 if best_of > n else None)
        sampling = convert.sampling_params(
            body,
            max_tokens=max_tokens,
            n_vocab=served.engine.vocab_size,
            logprobs=logprobs,
            prompt_logprobs=bool(body.echo and body.logprobs is not None),
        )
        request_id = response_id if len(prompts) == 1 else f"{response_id}-{i}"
        plans.append(
            GenerationPlan(who, served, "completions", request_id, prompt, sampling, best_of, admission=admission, part=i)
        )
    return plans


def _forwarded_plans(
    served: ServedModel, body: CompletionRequest, admission: Admission, n: int, best_of: int
) -> list[GenerationPlan]:
    """One plan per prompt for an engine that forwards to an OpenAI-compatible server: no local tokenizer;
    `echo` is the upstream's, `best_of` is still ranked here from the logprobs it returns."""
    prompts = _raw_prompts(body.prompt)
    logprobs = body.logprobs if body.logprobs is not None else (0 if best_of > n else None)
    response_id, who = admission.request_id, admission.principal
    plans = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, list) and any(t < 0 for t in prompt):
            param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            raise InvalidRequest(f"Invalid token id in '{param}': token ids are not negative.", param=param, code="invalid_value")
        upstream = convert.upstream_completion(body, prompt, logprobs=logprobs)
        context = served.engine.context_length
        reserve = min(body.max_tokens, context) if body.max_tokens is not None else max(1, context - upstream.prompt_estimate)
        sampling = convert.sampling_params(body, max_tokens=reserve, n_vocab=convert.ANY_VOCAB, logprobs=logprobs)
        request_id = response_id if len(prompts) == 1 else f"{response_id}-{i}"
        plans.append(
            GenerationPlan(
                who, served, "completions", request_id, (), sampling, best_of, admission=admission, upstream=upstream, part=i
            )
        )
    return plans


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def create_completion(body: CompletionRequest, request: Request, who: Principal = Depends(principal)) -> Response:
    state = app_state(request)
    runs: list[GenerationRun] = []
    admission_of = admitted(state.registry, state.limiter, who, body.model, COMPLETIONS, id_prefix="cmpl-")
    async with admission_of as (served, admission):  # counted (429 here) before any prompt is tokenized
        plans = await plan_completions(request, body, served, admission)
        try:
            for plan in plans:
                runs.append(await state.pipeline.run(plan).__aenter__())
        except BaseException:
            await _settle_all(runs)
            raise
    response_id = plans[0].request_id.rsplit("-", 1)[0] if len(plans) > 1 else plans[0].request_id

    async def settle() -> None:
        await _settle_all(runs)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        try:  # forwarded requests answer once the upstream did, so its errors keep their status
            events = [await gen.started(r) if r.plan.upstream is not None else r.events() for r in runs]
        except BaseException:
            await settle()
            raise
        response = gen.SettledStreamingResponse(_stream(response_id, body, runs, events, include_usage), settle=settle)
        response.headers.update(runs[-1].rate_limit_headers)
        return response
    try:
        results = await gen.until_disconnect(request, asyncio.gather(*(gen.collect(r) for r in runs)))
    except gen.ClientDisconnected:
        return Response(status_code=499)
    finally:
        await settle()
    return JSONResponse(_completion(response_id, body, runs, results), headers=runs[-1].rate_limit_headers)


async def _settle_all(runs: Sequence[GenerationRun]) -> None:
    for run in runs:
        await run.settle()


def _legacy_logprobs(tokens: Sequence[TokenLogprob], start_offset: int) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = start_offset
    for t in tokens:
        text = gen.token_text(t.piece)
        out["tokens"].append(text)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append({gen.token_text(p): lp for _, p, lp in t.top} if t.logprob is not None else None)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def _mean_logprob(choice: gen.ChoiceResult) -> float:
    values = [t.logprob for t in choice.logprobs if t.logprob is not None]
    return sum(values) / len(values) if values else 0.0


def _completion(response_id: str, body: CompletionRequest, runs: list[GenerationRun], results: list[gen.RunResult]) -> dict[str, object]:
    n = body.n or 1
    choices: list[dict[str, object]] = []
    for run, result in zip(runs, results):
        candidates = result.choices
        if len(candidates) > n:  # best_of: keep the n candidates the model found likeliest
            candidates = sorted(candidates, key=_mean_logprob, reverse=True)[:n]
        # A forwarding engine's upstream echoes the prompt itself.
        prompt_text = run.plan.model.engine.detokenize(run.plan.prompt_tokens) if body.echo and run.plan.upstream is None else ""
        for choice in candidates:
            logprobs = None
            if body.logprobs is not None:
                tokens = [*result.prompt_logprobs, *choice.logprobs] if body.echo else choice.logprobs
                logprobs = _legacy_logprobs(tokens, 0)
            choices.append(
                {"text": prompt_text + choice.text, "index": len(choices), "logprobs": logprobs, "finish_reason": choice.finish_reason}
            )
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    return {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": runs[0].plan.model.id,
        "system_fingerprint": runs[0].plan.model.fingerprint,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


async def _stream(
    response_id: str,
    body: CompletionRequest,
    runs: list[GenerationRun],
    events: list[AsyncIterator[EngineEvent]],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    n = body.n or 1
    created = int(time.time())
    model = runs[0].plan.model
    merged: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(i: int, run_events: AsyncIterator[EngineEvent]) -> None:
        try:
            async for event in run_events:
                await merged.put((i, event))
        except APIError as exc:
            await merged.put((i, exc))
        finally:
            await merged.put((i, None))

    def chunk(choices: list[dict[str, object]], **extra: object) -> bytes:
        payload: dict[str, object] = {
            "id": response_id, "object": "text_completion", "created": created, "model": model.id,
            "system_fingerprint": model.fingerprint, "choices": choices,
        }
        if include_usage:
            payload["usage"] = None
        payload.update(extra)
        return gen.sse(payload)

    offsets = [0] * (len(runs) * n)
    tasks = [asyncio.ensure_future(pump(i, run_events)) for i, run_events in enumerate(events)]
    try:
        if body.echo and model.engine is not None and not model.engine.forwards_requests:
            for i, run in enumerate(runs):
                text = model.engine.detokenize(run.plan.prompt_tokens)
                for j in range(n):
                    yield chunk([{"text": text, "index": i * n + j, "logprobs": None, "finish_reason": None}])
                    offsets[i * n + j] = len(text)
        open_runs = len(runs)
        while open_runs:
            i, event = await merged.get()
            if event is None:
                open_runs -= 1
            elif isinstance(event, APIError):
                yield gen.sse(event.body())
                return
            elif isinstance(event, TextDelta):
                index = i * n + event.index
                logprobs = _legacy_logprobs(event.logprobs, offsets[index]) if body.logprobs is not None else None
                offsets[index] += len(event.text)
                yield chunk([{"text": event.text, "index": index, "logprobs": logprobs, "finish_reason": None}])
            elif isinstance(event, ChoiceFinished):
                yield chunk([{"text": "", "index": i * n + event.index, "logprobs": None, "finish_reason": event.reason}])
        if (unrecorded := await gen.settle_before_done(runs)) is not None:
            yield unrecorded
            return
        if include_usage:
            prompt_tokens = sum(r.prompt_tokens for r in runs)
            completion_tokens = sum(r.completion_tokens for r in runs)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
            yield chunk([], usage=usage)
        yield gen.SSE_DONE
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        await _settle_all(runs)
