"""`Observability`: the app's metrics and access log, and the hook the pipeline reports through."""

from __future__ import annotations

from typing import Protocol

from modelhost.observability.access_log import AccessLog, current_exchange
from modelhost.observability.metrics import Metrics
from modelhost.observability.report import SettlementReport


class SettlementObserver(Protocol):
    """Told once per settled request, generation or embeddings (the pipeline calls it from `Settlement.close`)."""

    def settled(self, report: SettlementReport) -> None: ...


class Observability:
    """Built once in the app factory; shared by the middleware, the pipeline and `/metrics`."""

    def __init__(self, *, access_log: bool) -> None:
        self.metrics = Metrics()
        self.access_log = AccessLog(enabled=access_log)

    def settled(self, report: SettlementReport) -> None:
        self.metrics.settled(report)
        exchange = current_exchange()
        if exchange is not None:
            exchange.note_settled(
                model=report.model,
                prompt_tokens=report.prompt_tokens,
                completion_tokens=report.completion_tokens,
                ttft=report.time_to_first_token,
            )
