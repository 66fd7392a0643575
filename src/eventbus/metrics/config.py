"""`MetricsConfig`: whether and where a bus serves ``/metrics``, ``/livez`` and ``/readyz``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from eventbus.errors import ConfigurationError

__all__ = ["WORKER_PORTS_DIR", "MetricsConfig", "require_prometheus_client"]

WORKER_PORTS_DIR = "EVENTBUS_METRICS_PORTS_DIR"
"""Set by ``eventbus run --workers N --metrics-port P`` for its children: the directory where
each writes the port of its own endpoints (`eventbus.metrics.workers`)."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Metrics of one bus (``EventBus(metrics=MetricsConfig(...))``; ``metrics=True`` is
    ``MetricsConfig()``).

    ``port``: serve ``/metrics``, ``/livez`` and ``/readyz`` on this TCP port while the bus
    runs (0: any free port, see `EventBus.metrics_port`); None serves nothing, and the
    application exposes `EventBus.metrics_registry` itself. ``host``: the address to bind;
    ``0.0.0.0`` by default, since a scraper or a Kubernetes probe comes from outside the pod.
    ``backlog_interval``: seconds between two reads of consumer lag and queue depth from the
    broker (a background task; a scrape never waits for the broker).
    """

    port: int | None = None
    host: str = "0.0.0.0"
    backlog_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ConfigurationError(f"metrics port must be 0-65535, got {self.port}")
        if not (math.isfinite(self.backlog_interval) and self.backlog_interval > 0):
            raise ConfigurationError(
                f"backlog_interval must be > 0 seconds, got {self.backlog_interval}"
            )


def require_prometheus_client() -> None:
    """Raise `ConfigurationError` naming the extra when ``prometheus_client`` is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'eventbus[prometheus]'"
        ) from exc
