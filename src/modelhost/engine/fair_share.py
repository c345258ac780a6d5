"""Fair shares of an engine's waiting room: no organization, and no project in one, can take it all.

An engine has room for `total` requests waiting (the llama.cpp engine's queue for slots) or in
flight (an upstream server or vLLM, which queue behind what is forwarded to them). Shared
first-come, one key sending a few hundred long requests fills it and every other organization's
requests get 503s. So each organization holds at most `per_organization` places and each of its
projects at most `per_project`; a tenant past its share gets the same 503 `overloaded` (with
``Retry-After: 1``) as a full queue, while the others still find room. Which waiting request goes
first is the engine's business (the llama.cpp engine: round robin between organizations, then
between their projects).

Defaults: an organization may hold a quarter of the room, a project half of its organization's
share (at least one place each), so at least four organizations, or eight projects, must be busy
before the room is full. ``ShareLimits.of(256)`` → 256 in all, 64 per organization, 32 per project.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from modelhost.engine.base import Engine, EngineEvent, EngineOverloaded, Generation, GenerationRequest


@dataclass(frozen=True)
class ShareLimits:
    """How many places there are in all, per organization and per project."""

    total: int
    per_organization: int
    per_project: int

    @classmethod
    def of(cls, total: int, per_organization: int | None = None, per_project: int | None = None) -> ShareLimits:
        """The limits with the defaults of the module docstring for the shares not given."""
        assert total >= 1, "an engine has room for at least one request"
        organization = min(total, per_organization if per_organization is not None else max(1, total // 4))
        project = min(organization, per_project if per_project is not None else max(1, organization // 2))
        assert organization >= 1 and project >= 1, "a share is at least one place"
        return cls(total, organization, project)


class QueueShares:
    """Who holds how many places; `take` refuses past a share. Safe to call from any thread."""

    def __init__(self, limits: ShareLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._held = 0
        self._organizations: collections.Counter[str] = collections.Counter()
        self._projects: collections.Counter[tuple[str, str]] = collections.Counter()

    @property
    def held(self) -> int:
        return self._held

    def take(self, organization: str, project: str, *, joins_admitted: bool = False) -> None:
        """Take a place for (organization, project), or raise `EngineOverloaded`.

        `joins_admitted`: a later part of a request whose first part was let in (a legacy completion
        with several prompts) is counted but never refused, so one request is admitted whole.
        """
        limits = self.limits
        with self._lock:
            if not joins_admitted:
                if self._held >= limits.total:
                    raise EngineOverloaded("The engine's queue is full.")
                if self._organizations[organization] >= limits.per_organization:
                    raise EngineOverloaded("This organization holds its share of the engine's queue.")
                if self._projects[organization, project] >= limits.per_project:
                    raise EngineOverloaded("This project holds its share of the engine's queue.")
            self._held += 1
            self._organizations[organization] += 1
            self._projects[organization, project] += 1

    def give_back(self, organization: str, project: str) -> None:
        with self._lock:
            self._held -= 1
            self._organizations[organization] -= 1
            if self._organizations[organization] <= 0:
                del self._organizations[organization]  # the counters only ever hold current tenants
            self._projects[organization, project] -= 1
            if self._projects[organization, project] <= 0:
                del self._projects[organization, project]


class _HeldGeneration:
    """A generation that gives its place back once it ends, is cancelled or is abandoned."""

    def __init__(self, inner: Generation, shares: QueueShares, request: GenerationRequest) -> None:
        self._inner = inner
        self._shares = shares
        self._tenant = (request.cache_scope, request.project)
        self._held = True

    @property
    def completion_tokens(self) -> int:
        return self._inner.completion_tokens

    @property
    def cached_tokens(self) -> int:
        return self._inner.cached_tokens

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._shares.give_back(*self._tenant)

    def cancel(self) -> None:
        self._inner.cancel()
        self._release()

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        try:
            async for event in self._inner:
                yield event
        finally:
            self._release()


class FairShareEngine:
    """An engine whose requests in flight are shared out by `ShareLimits` (for engines that queue
    elsewhere: an upstream server, vLLM). Every other attribute is the inner engine's."""

    def __init__(self, inner: Engine, limits: ShareLimits) -> None:
        self.inner = inner
        self.shares = QueueShares(limits)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def submit(self, request: GenerationRequest) -> _HeldGeneration:
        self.shares.take(request.cache_scope, request.project, joins_admitted=request.part > 0)
        try:
            generation = self.inner.submit(request)
        except BaseException:
            self.shares.give_back(request.cache_scope, request.project)
            raise
        return _HeldGeneration(generation, self.shares, request)
