"""Admission: the step every model request takes before any work on it, in one place for all endpoints.

Rendering a chat template, tokenizing and compiling a schema cost CPU whether or not the request
then runs, so a request is counted against its rate limits before that work, not after it. The
model is resolved first (a cheap lookup; the buckets are per model, and a model the caller may not
use is a 404 that costs nothing), then `Limiter.admit` counts the request and holds a lease of its
key's concurrency while it is planned. Over a limit: the 429, before any planning::

    async with admitted(state.registry, state.limiter, who, body.model, CHAT, id_prefix="chatcmpl-") as (served, admission):
        plan = ...                          # a 400 here still counted the request
        await pipeline.run(plan).__aenter__()   # reserves with `admission`: takes its lease over

Leaving the block frees the lease unless a reservation took it over, so it is freed exactly once
however planning ends (an error, a cancellation); the request stays counted either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from modelhost.auth import Principal
from modelhost.engine.registry import ModelRegistry, ServedModel
from modelhost.ids import new_id
from modelhost.limits import Admission, Limiter


@asynccontextmanager
async def admitted(
    registry: ModelRegistry, limiter: Limiter, who: Principal, model: str, capability: str, *, id_prefix: str
) -> AsyncIterator[tuple[ServedModel, Admission]]:
    """The model `who` asked for and its admission (whose `request_id` starts with `id_prefix`);
    raises `ModelNotFound` (404) or the limiter's 429/503 before yielding, having counted nothing."""
    served = registry.get(model, capability, caller=who)
    with anyio.CancelScope(shield=True):  # what the limit store took must come back to us
        admission = await limiter.admit(who, model=served.id, request_id=new_id(id_prefix))
    try:
        yield served, admission
    finally:
        with anyio.CancelScope(shield=True):
            await limiter.abandon(admission)  # a no-op once a reservation holds the lease
