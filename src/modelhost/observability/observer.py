"""`Observability`: the app's metrics and access log, and the hook the pipeline reports through."""

from __future__ import annotations

from typing import Protocol

from modelhost.observability.access_log import AccessLog, current_exchange
from modelhost.observability.metrics import Metrics
from modelhost.observability.report import GenerationReport


class GenerationObserver(Protocol):
    """Told once per settled generation (the pipeline calls it from `GenerationRun.settle`)."""

    def generation_settled(self, report: GenerationReport) -> None: ...


class Observability:
    """Built once in the app factory; shared by the middleware, the pipeline and `/metrics`."""

    def __init__(self, *, access_log: bool) -> None:
        self.metrics = Metrics()
        self.access_log = AccessLog(enabled=access_log)

    def generation_settled(self, report: GenerationReport) -> None:
        self.metrics.generation_settled(report)
        exchange = current_exchange()
        if exchange is not None:
            exchange.note_generation(
                model=report.model,
                prompt_tokens=report.prompt_tokens,
                completion_tokens=report.completion_tokens,
                ttft=report.time_to_first_token,
            )
