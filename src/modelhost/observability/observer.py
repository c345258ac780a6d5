"""`Observability`: the app's metrics and access log, and the hook the pipeline reports through."""

from __future__ import annotations

from typing import Protocol

from modelhost.observability.access_log import AccessLog, current_exchange
from modelhost.observability.metrics import Metrics


class GenerationObserver(Protocol):
    """Told once per settled generation (the pipeline calls it from `GenerationRun.settle`)."""

    def generation_settled(
        self,
        *,
        model: str,
        operation: str,
        outcome: str,
        prompt_tokens: int,
        completion_tokens: int,
        time_to_first_token: float | None,
        time_per_output_token: float | None,
    ) -> None: ...


class Observability:
    """Built once in the app factory; shared by the middleware, the pipeline and `/metrics`."""

    def __init__(self, *, access_log: bool) -> None:
        self.metrics = Metrics()
        self.access_log = AccessLog(enabled=access_log)

    def generation_settled(
        self,
        *,
        model: str,
        operation: str,
        outcome: str,
        prompt_tokens: int,
        completion_tokens: int,
        time_to_first_token: float | None,
        time_per_output_token: float | None,
    ) -> None:
        self.metrics.generation_settled(
            model=model,
            operation=operation,
            outcome=outcome,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            time_to_first_token=time_to_first_token,
            time_per_output_token=time_per_output_token,
        )
        exchange = current_exchange()
        if exchange is not None:
            exchange.note_generation(
                model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, ttft=time_to_first_token
            )
