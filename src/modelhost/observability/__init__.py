"""What the server tells its operator: Prometheus metrics and one JSON access line per request.

Nothing here imports the web framework; `modelhost.api` feeds it and serves `/metrics`.
"""

from modelhost.observability.access_log import (
    AccessLog,
    Exchange,
    SafeFormatter,
    configure_logging,
    current_exchange,
    escape_control,
)
from modelhost.observability.metrics import Metrics
from modelhost.observability.observer import Observability, SettlementObserver
from modelhost.observability.report import SettlementReport

__all__ = [
    "AccessLog",
    "Exchange",
    "Metrics",
    "Observability",
    "SafeFormatter",
    "SettlementObserver",
    "SettlementReport",
    "configure_logging",
    "current_exchange",
    "escape_control",
]
