"""The Prometheus metrics of one app: built in the app factory, passed through `AppState`.

Every metric lives in the app's own `CollectorRegistry` (never prometheus_client's global one), so
two apps in one process — tests do that — never share counters. Labels are bounded sets only:
route templates (never raw paths), status codes, model ids from the registry (never from a request
body), error codes. No label ever carries a key, a key id, an organization or a prompt.

Other packages record through the methods here or add their own metric with ``metrics.registry``::

    metrics.rejected("insufficient_quota")              # any caller
    Counter("modelhost_x_total", "...", registry=metrics.registry)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelhost.observability.report import SettlementReport

# Seconds; TTFT on two CPU cores ranges from ~20 ms (cached prefix) to seconds (long prompt, queued).
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

EngineStates = Callable[[], Iterable[dict[str, object]]]


class _EngineCollector(Collector):
    """Reads each engine's `state()` at scrape time: slots busy and total, queue depth."""

    def __init__(self, states: EngineStates) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        busy = GaugeMetricFamily("modelhost_engine_slots_busy", "Sequences (slots) generating now.", labels=["model"])
        total = GaugeMetricFamily("modelhost_engine_slots_total", "Sequences (slots) the engine has.", labels=["model"])
        queued = GaugeMetricFamily(
            "modelhost_engine_queue_depth", "Requests waiting for a slot (503 once it is full).", labels=["model"]
        )
        for state in self._states():
            model = str(state.get("model", ""))
            for family, field in ((busy, "slots_busy"), (total, "slots_total"), (queued, "queue_depth")):
                value = state.get(field)
                if isinstance(value, (int, float)):
                    family.add_metric([model], float(value))
        yield from (busy, total, queued)


class Metrics:
    """The counters, gauges and histograms of one running app (see the module docstring)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelhost_http_requests", "HTTP requests answered, by route template, method, status and model.",
            ["route", "method", "status", "model"], registry=r,
        )
        self.request_seconds = Histogram(
            "modelhost_http_request_duration_seconds", "Time from request start to the end of the response.",
            ["route", "method"], buckets=_REQUEST_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("modelhost_http_requests_in_flight", "Requests being answered now.", registry=r)
        self.prompt_tokens = Counter(
            "modelhost_prompt_tokens", "Prompt tokens of settled requests (generations and embeddings).", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "modelhost_completion_tokens", "Completion tokens generated (also of cancelled generations).", ["model"],
            registry=r,
        )
        self.generations = Counter(
            "modelhost_generations", "Settled model requests (generations, and embeddings by operation) by outcome (completed, cancelled, failed).",
            ["model", "operation", "outcome"], registry=r,
        )
        self.time_to_first_token = Histogram(
            "modelhost_time_to_first_token_seconds", "From engine submission to the first text of a generation.",
            ["model"], buckets=_TTFT_BUCKETS, registry=r,
        )
        self.time_per_output_token = Histogram(
            "modelhost_time_per_output_token_seconds",
            "Mean time between completion tokens after the first, one observation per generation.",
            ["model"], buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.rejections = Counter(
            "modelhost_rejections",
            "Requests refused to protect the service, by error code (rate_limit_exceeded, insufficient_quota, "
            "overloaded, request_too_large, request_timeout, ...).",
            ["reason"], registry=r,
        )

    def watch_engines(self, states: EngineStates) -> None:
        """Report slots and queue depth of the engines `states()` describes, read at each scrape."""
        self.registry.register(_EngineCollector(states))

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def settled(self, report: SettlementReport) -> None:
        model = report.model
        self.generations.labels(model=model, operation=report.operation, outcome=report.outcome).inc()
        self.prompt_tokens.labels(model=model).inc(report.prompt_tokens)
        self.completion_tokens.labels(model=model).inc(report.completion_tokens)
        if report.time_to_first_token is not None:
            self.time_to_first_token.labels(model=model).observe(report.time_to_first_token)
        if report.time_per_output_token is not None:
            self.time_per_output_token.labels(model=model).observe(report.time_per_output_token)

    def request_finished(self, *, route: str, method: str, status: int, model: str, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status), model=model).inc()
        self.request_seconds.labels(route=route, method=method).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
