"""`POST /v1/completions` (legacy): one plan per prompt (`pipeline.planning.plan_text`) through the same pipeline as chat.

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

from modelhost.api import generation as gen
from modelhost.api.deps import app_state, principal
from modelhost.auth import Principal
from modelhost.engine import ChoiceFinished, TextDelta
from modelhost.engine.base import EngineEvent, TokenLogprob
from modelhost.engine.registry import COMPLETIONS
from modelhost.errors import APIError
from modelhost.pipeline import GenerationRun
from modelhost.pipeline.admission import admitted
from modelhost.pipeline.assembly import ChoiceResult, RunResult, collect
from modelhost.pipeline.planning import plan_text
from modelhost.protocol import convert
from modelhost.protocol.common import ErrorResponse
from modelhost.protocol.completions import Completion, CompletionRequest

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(principal)])


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def create_completion(body: CompletionRequest, request: Request, who: Principal = Depends(principal)) -> Response:
    state = app_state(request)
    if body.ignored_fields():
        logger.info("completions: ignoring unsupported fields %s", ", ".join(body.ignored_fields()))
    runs: list[GenerationRun] = []
    admission_of = admitted(state.registry, state.limiter, who, body.model, COMPLETIONS, id_prefix="cmpl-")
    async with admission_of as (served, admission):  # counted (429 here) before any prompt is tokenized
        plans = await plan_text(convert.text_input(body), served, admission, max_n=state.settings.max_n)
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
        results = await gen.until_disconnect(request, asyncio.gather(*(collect(r) for r in runs)))
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


def _mean_logprob(choice: ChoiceResult) -> float:
    values = [t.logprob for t in choice.logprobs if t.logprob is not None]
    return sum(values) / len(values) if values else 0.0


def _completion(response_id: str, body: CompletionRequest, runs: list[GenerationRun], results: list[RunResult]) -> dict[str, object]:
    n = body.n or 1
    choices: list[dict[str, object]] = []
    for run, result in zip(runs, results):
        candidates = result.choices
        if len(candidates) > n:  # best_of: keep the n candidates the model found likeliest
            candidates = sorted(candidates, key=_mean_logprob, reverse=True)[:n]
        # A forwarding engine's upstream echoes the prompt itself.
        engine = run.plan.model.engine
        prompt_text = engine.detokenize(run.plan.prompt_tokens) if body.echo and engine is not None and run.plan.upstream is None else ""
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
