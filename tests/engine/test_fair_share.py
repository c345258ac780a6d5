"""Fair shares of an engine's waiting room (`engine/fair_share.py`), and the wrapper that gives
upstream and vLLM engines the same shares of their requests in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from modelhost.engine.base import EngineOverloaded, GenerationRequest, SamplingParams, TextDelta
from modelhost.engine.fair_share import FairShareEngine, QueueShares, ShareLimits


def test_default_shares_are_a_quarter_per_organization_and_half_of_that_per_project() -> None:
    assert ShareLimits.of(256) == ShareLimits(256, 64, 32)
    assert ShareLimits.of(1) == ShareLimits(1, 1, 1)
    assert ShareLimits.of(8) == ShareLimits(8, 2, 1)
    assert ShareLimits.of(8, per_organization=20, per_project=30) == ShareLimits(8, 8, 8)  # never above the whole
    assert ShareLimits.of(100, per_organization=10) == ShareLimits(100, 10, 5)


def test_shares_refuse_past_the_project_the_organization_and_the_total() -> None:
    shares = QueueShares(ShareLimits(4, 2, 1))
    shares.take("a", "p1")
    with pytest.raises(EngineOverloaded, match="project"):
        shares.take("a", "p1")
    shares.take("a", "p2")
    with pytest.raises(EngineOverloaded, match="organization"):
        shares.take("a", "p3")
    shares.take("b", "p1")  # the same project id in another organization is another project
    shares.take("c", "p")
    with pytest.raises(EngineOverloaded, match="full"):
        shares.take("d", "p")
    shares.take("a", "p1", joins_admitted=True)  # a later part of an admitted request is never refused
    assert shares.held == 5
    for tenant in [("a", "p1"), ("a", "p1"), ("a", "p2"), ("b", "p1"), ("c", "p")]:
        shares.give_back(*tenant)
    assert shares.held == 0
    shares.take("a", "p1")


class _Generation:
    def __init__(self) -> None:
        self.cancelled = False

    completion_tokens = 1
    cached_tokens = 0

    def cancel(self) -> None:
        self.cancelled = True

    async def __aiter__(self) -> AsyncIterator[object]:
        yield TextDelta(0, "x")


class _Upstream:
    forwards_requests = True
    model_id = "up"

    def __init__(self) -> None:
        self.fail = False

    def submit(self, request: GenerationRequest) -> _Generation:
        if self.fail:
            raise EngineOverloaded("upstream says no")
        return _Generation()


def _request(organization: str, project: str = "p", part: int = 0) -> GenerationRequest:
    return GenerationRequest("r", (), SamplingParams(max_tokens=1), cache_scope=organization, project=project, part=part)


def test_a_forwarding_engine_shares_its_requests_in_flight() -> None:
    async def main() -> None:
        inner = _Upstream()
        engine = FairShareEngine(inner, ShareLimits(8, 2, 2))
        assert engine.forwards_requests and engine.model_id == "up"  # everything else is the inner engine's
        first, second = engine.submit(_request("a")), engine.submit(_request("a"))
        with pytest.raises(EngineOverloaded):
            engine.submit(_request("a"))
        engine.submit(_request("a", part=1))  # joins its first part
        other = engine.submit(_request("b"))
        assert engine.shares.held == 4
        assert [e async for e in first] == [TextDelta(0, "x")]  # an ended generation gives its place back
        second.cancel()  # so does a cancelled one, once
        second.cancel()
        assert engine.shares.held == 2
        engine.submit(_request("a"))
        inner.fail = True
        with pytest.raises(EngineOverloaded, match="upstream"):
            engine.submit(_request("c"))
        assert engine.shares.held == 3  # a refused submit holds nothing
        other.cancel()

    asyncio.run(main())
