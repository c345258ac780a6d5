"""Fair shares of an engine: no organization, and no project in one, can take it all.

**Waiting places** (`ShareLimits`, `QueueShares`). An engine has room for `total` requests
waiting: the llama.cpp engine's queue for slots, or the requests an upstream or vLLM model holds
here until it may forward them (below). Shared first-come, one key sending a few hundred long
requests fills it and every other organization's requests get 503s. So each organization holds
at most `per_organization` places and each of its projects at most `per_project`; a tenant past
its share gets the same 503 `overloaded` (with ``Retry-After: 1``) as a full queue, while the
others still find room. Defaults: an organization may hold a quarter of the places, a project
half of its organization's share (at least one place each), so at least four organizations, or
eight projects, must be busy before the room is full. ``ShareLimits.of(256)`` → 256 in all, 64
per organization, 32 per project.

**Sequences in flight** (`InFlightLimits`, `FairShareEngine`). An upstream server or vLLM runs
what it is handed in one batch of bounded size (vLLM's ``max_num_seqs``) and queues the rest
first come, first served. Forwarding more than that batch would let one organization's flood
sit in the upstream's queue ahead of everyone else's requests: their requests would not fail, they
would wait behind it. So `FairShareEngine` forwards at most `total` sequences at once (a request
with ``n`` choices is ``n``) — the upstream's own capacity, so nothing waits in its queue — and
holds the rest here, in waiting places shared as above, sending them on as room frees: round
robin between organizations (the one with the fewest sequences in flight, among those the one
served least recently), then between their projects, oldest first within one. Round robin alone
still leaves a newcomer waiting until one of a flood's long generations ends, so an organization
may have at most `per_organization` sequences in flight (default half of `total`) and a project
`per_project` (default its organization's): whatever one organization sends, half of the
upstream's batch is free for the others, and their requests are forwarded at once.
``InFlightLimits.of(256)`` → 256 in flight, 128 per organization, 128 per project.

**Batch lines** (`Priority.BATCH`) get only what interactive requests leave: a waiting batch
request is forwarded only while no interactive request that its shares would let through
waits, and batch requests together hold at most `InFlightLimits.batch` sequences (default: three
quarters of `total`, at least one), so a quarter of the upstream's batch is always there for
interactive requests arriving while batch work runs. (An upstream cannot be asked to pause a
sequence it runs, so this reserve, not preemption, is what interactive requests find.)
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from modelhost.engine.base import (
    Engine,
    EngineEvent,
    EngineFailed,
    EngineOverloaded,
    Generation,
    GenerationRequest,
    Priority,
)
from modelhost.engine.wrapper import EngineWrapper

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShareLimits:
    """How many waiting places there are in all, per organization and per project."""

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


@dataclass(frozen=True)
class InFlightLimits:
    """How many sequences a forwarding engine hands on at once, in all, per organization and per
    project, and of batch work (`batch`)."""

    total: int
    per_organization: int
    per_project: int
    batch: int | None = None  # None: three quarters of `total`, at least one (`batch_total`)

    @classmethod
    def of(
        cls, total: int, per_organization: int | None = None, per_project: int | None = None, batch: int | None = None
    ) -> InFlightLimits:
        """The limits with the defaults of the module docstring for the shares not given."""
        assert total >= 1, "an engine runs at least one sequence"
        organization = min(total, per_organization if per_organization is not None else max(1, total // 2))
        project = min(organization, per_project if per_project is not None else organization)
        assert organization >= 1 and project >= 1, "a share is at least one sequence"
        assert batch is None or batch >= 1, "batch work may run at least one sequence"
        return cls(total, organization, project, None if batch is None else min(total, batch))

    @property
    def batch_total(self) -> int:
        """The most sequences batch work may have in flight: a quarter of `total` stays for interactive requests."""
        return self.batch if self.batch is not None else max(1, self.total - max(1, self.total // 4))


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


class _State(enum.Enum):
    WAITING = "waiting"  # held here, not yet handed to the inner engine
    RUNNING = "running"  # handed on; its sequences count in flight
    ENDED = "ended"


class _FairGeneration:
    """A request of a `FairShareEngine`: waits here for its turn, then is the inner engine's generation.

    It gives its waiting place or its sequences in flight back once it ends, is cancelled or is
    abandoned. A request that waited is handed to the inner engine by its own iterator (so the
    inner engine's task runs in the request's own context, not in that of the request whose end
    made room), and a refusal of the inner engine then is raised from the iterator.
    """

    def __init__(self, engine: FairShareEngine, request: GenerationRequest, weight: int) -> None:
        self.request = request
        self.tenant = (request.cache_scope, request.project)
        self.batch = request.priority is Priority.BATCH
        self.weight = weight  # sequences in flight: its n, capped at its project's (and batch) share so it can always run
        self.state = _State.WAITING
        self.holds_place = False  # a waiting place of `engine.queue`
        self.inner: Generation | None = None
        self._engine = engine
        self._turn = asyncio.Event()

    @property
    def completion_tokens(self) -> int:
        return self.inner.completion_tokens if self.inner is not None else 0

    @property
    def cached_tokens(self) -> int:
        return self.inner.cached_tokens if self.inner is not None else 0

    def begin(self) -> None:
        self._turn.set()

    def cancel(self) -> None:
        if self.inner is not None:
            self.inner.cancel()
        self._engine.end(self)

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        read_to_the_end = False
        try:
            await self._turn.wait()
            if self.state is not _State.RUNNING:
                return  # cancelled while it waited
            if self.inner is None:
                try:
                    self._engine.hand_on(self)
                except EngineFailed:
                    raise
                except Exception as exc:
                    raise _failure(exc) from exc
            assert self.inner is not None
            async for event in self.inner:
                yield event
            read_to_the_end = True
        finally:
            if self.inner is not None and not read_to_the_end:
                self.inner.cancel()  # its reader left: the inner work stops with it, as its place is given back
            self._engine.end(self)


class RefusedAfterWaiting(EngineFailed):
    """The request waited its turn here, then the inner engine was overloaded and refused it.

    Raised from the stream (its response may have begun), so it is an `EngineFailed`, told to the
    client as the `EngineOverloaded` that `submit` would have raised."""


def _failure(error: Exception) -> EngineFailed:
    """What a request that waited its turn raises when the inner engine then refused it (its 200 may be sent)."""
    if isinstance(error, EngineOverloaded):
        return RefusedAfterWaiting(str(error))
    return EngineFailed(f"{type(error).__name__}: {error}")


class FairShareEngine(EngineWrapper):
    """An engine whose sequences in flight are shared out by `InFlightLimits`, the rest waiting here
    in places shared by `ShareLimits` (for engines that queue elsewhere: an upstream server, vLLM).
    Every other attribute is the inner engine's (`EngineWrapper`). Use it from the event loop's thread only.

    `in_flight` None: the inner engine's ``capacity`` (vLLM's ``max_num_seqs``), known once started.
    """

    def __init__(
        self,
        inner: Engine,
        queue: ShareLimits,
        *,
        in_flight: int | None = None,
        per_organization: int | None = None,
        per_project: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.queue = QueueShares(queue)
        self._shares = (per_organization, per_project)
        self.limits: InFlightLimits | None = InFlightLimits.of(in_flight, *self._shares) if in_flight is not None else None
        self._running = 0  # sequences in flight
        self._batch_running = 0  # of which batch work
        self._organizations: collections.Counter[str] = collections.Counter()
        self._projects: collections.Counter[tuple[str, str]] = collections.Counter()
        self._waiting: list[_FairGeneration] = []  # in arrival order
        self._served = 0
        self._served_at: dict[object, int] = {}  # organization, (organization, project) → when last handed on

    @property
    def in_flight(self) -> int:
        """Sequences handed to the inner engine and not yet ended."""
        return self._running

    async def start(self) -> None:
        await self.inner.start()
        if self.limits is None:
            self.limits = InFlightLimits.of(int(self.inner.capacity), *self._shares)  # type: ignore[attr-defined]
        limits = self.limits
        logger.info(
            "model %s: at most %d sequences in flight (%d per organization, %d per project), %d requests waiting",
            self.inner.model_id,
            limits.total,
            limits.per_organization,
            limits.per_project,
            self.queue.limits.total,
        )

    def state(self) -> dict[str, object]:
        state = dict(self.inner.state())
        state["queue_depth"] = len(self._waiting)
        if self.limits is not None:
            state["slots_total"] = self.limits.total
        return state

    def submit(self, request: GenerationRequest) -> _FairGeneration:
        """Hand `request` on now if its turn and its shares allow, else hold it in a waiting place.

        Raises `EngineOverloaded` when it would wait but its tenant (or everyone) has no waiting
        place left, and whatever the inner engine raises when it is handed on at once.
        """
        limits = self.limits
        assert limits is not None, "start() the engine first"
        most = min(limits.per_project, limits.batch_total) if request.priority is Priority.BATCH else limits.per_project
        generation = _FairGeneration(self, request, min(request.n, most))
        self._waiting.append(generation)
        self._dispatch()
        if generation.state is _State.RUNNING:
            self.hand_on(generation)  # what the inner engine raises reaches the caller, as without this wrapper
            return generation
        try:
            self.queue.take(*generation.tenant, joins_admitted=request.part > 0)
        except EngineOverloaded:
            self._waiting.remove(generation)
            generation.state = _State.ENDED
            raise
        generation.holds_place = True
        return generation

    def hand_on(self, generation: _FairGeneration) -> None:
        """Submit `generation`, whose turn came, to the inner engine; if that raises, nothing stays held."""
        assert generation.state is _State.RUNNING and generation.inner is None
        try:
            generation.inner = self.inner.submit(generation.request)
        except BaseException:
            self.end(generation)
            raise

    def end(self, generation: _FairGeneration) -> None:
        """`generation` ended, was cancelled or abandoned: what it held goes to the next in turn."""
        if generation.state is _State.WAITING:
            self._waiting.remove(generation)
            if generation.holds_place:
                self.queue.give_back(*generation.tenant)
        elif generation.state is _State.RUNNING:
            self._take_back(generation)
        else:
            return
        generation.state = _State.ENDED
        generation.begin()  # an iterator still waiting for its turn ends
        self._dispatch()

    # -- whose turn ------------------------------------------------------------------------------
    def _fits(self, generation: _FairGeneration) -> bool:
        """Whether its organization and project have room for it in flight."""
        limits = self.limits
        assert limits is not None
        organization, _ = tenant = generation.tenant
        return (
            self._organizations[organization] + generation.weight <= limits.per_organization
            and self._projects[tenant] + generation.weight <= limits.per_project
        )

    def _turn(self, generation: _FairGeneration) -> tuple[int, int, int, int]:
        organization, _ = tenant = generation.tenant
        return (
            self._organizations[organization],
            self._served_at.get(organization, -1),
            self._projects[tenant],
            self._served_at.get(tenant, -1),
        )

    def _dispatch(self) -> None:
        """Hand on waiting requests, fairest first, while their shares and the total allow; batch
        requests only while no interactive one is ready, and within the batch share."""
        limits = self.limits
        assert limits is not None
        while self._waiting:
            ready = [g for g in self._waiting if self._fits(g)]
            interactive = [g for g in ready if not g.batch]
            if not ready:
                return
            generation = min(interactive or ready, key=self._turn)  # min is stable: oldest first among equals
            if self._running + generation.weight > limits.total:
                return  # it waits for room rather than being overtaken by smaller requests forever
            if generation.batch and self._batch_running + generation.weight > limits.batch_total:
                return  # the rest is kept for interactive requests
            self._waiting.remove(generation)
            self._reserve(generation)

    def _reserve(self, generation: _FairGeneration) -> None:
        """Its turn: its sequences count in flight from now; its iterator (or `submit`) hands it on."""
        organization, _ = tenant = generation.tenant
        if generation.holds_place:
            self.queue.give_back(*tenant)
            generation.holds_place = False
        self._running += generation.weight
        self._batch_running += generation.weight if generation.batch else 0
        self._organizations[organization] += generation.weight
        self._projects[tenant] += generation.weight
        self._served += 1
        self._served_at[organization] = self._served_at[tenant] = self._served
        generation.state = _State.RUNNING
        generation.begin()

    def _take_back(self, generation: _FairGeneration) -> None:
        organization, _ = tenant = generation.tenant
        self._running -= generation.weight
        self._batch_running -= generation.weight if generation.batch else 0
        self._organizations[organization] -= generation.weight
        if self._organizations[organization] <= 0:
            del self._organizations[organization]  # the counters only ever hold current tenants
        self._projects[tenant] -= generation.weight
        if self._projects[tenant] <= 0:
            del self._projects[tenant]
