"""Background responses: run to the end detached from the request that made them.

The request stores the response `queued` (with the replica that runs it) and returns at once; a
task on this replica then runs the generation, storing `in_progress` and then the finished object.
Each state is stored only while the response is still running in the store, so a cancel (which
marks it `cancelled` there, from any replica) always wins; on this replica it also cancels the
task, which frees the engine's slots and settles the ledger with the tokens made so far.

A replica that stops leaves nothing running forever: its heartbeat (the ledger's) goes stale, and
the next read of the response marks it `failed` (`responses.context.get`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

from modelhost.errors import APIError
from modelhost.pipeline import GenerationRun
from modelhost.pipeline.assembly import collect
from modelhost.responses import render
from modelhost.structured.tools import ToolPlan

logger = logging.getLogger(__name__)
Save = Callable[[dict[str, Any]], Awaitable[object]]


class BackgroundResponses:
    """This replica's running background responses, by id."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, response_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"background response {response_id}")
        self._tasks[response_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(response_id, None))

    def cancel(self, response_id: str) -> None:
        task = self._tasks.get(response_id)
        if task is not None:
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)


async def run_detached(run: GenerationRun, tools: ToolPlan | None, frame: dict[str, Any], *, with_logprobs: bool, save: Save) -> None:
    """Run `run` to its end, storing each state of the response through `save`; settles it however it ends."""
    try:
        await save({**frame, "status": "in_progress"})
        result = await collect(run, tools)
        await run.settle()
        choice = result.choices[0]
        usage = render.usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens)
        await save(render.finish(frame, render.output_items(choice, with_logprobs=with_logprobs), choice.finish_reason, usage))
    except APIError as exc:
        code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        await save(render.failed(frame, code, exc.message, []))
    except Exception:
        logger.exception("background response %s failed", frame["id"])
        await save(render.failed(frame, "server_error", "The server failed while generating this response.", []))
    finally:
        with anyio.CancelScope(shield=True):
            await run.settle()
