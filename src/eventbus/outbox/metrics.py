"""The outbox gauges in the bus's Prometheus registry (imported only when metrics are on).

Built at scrape time from `RelayStats`, like `eventbus.metrics.collector`: the relay reads the
backlog every ``backlog_interval`` seconds, so a scrape never waits for the database.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from eventbus.outbox.stats import RelayStats, relay_backlog

__all__ = ["OutboxCollector"]


class OutboxCollector(Collector):
    def __init__(self, stats: Mapping[str, RelayStats]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        unsent = GaugeMetricFamily(
            "eventbus_outbox_unsent_messages",
            "Outbox rows committed and not yet published (the relay's backlog).",
            labels=["table"],
        )
        oldest = GaugeMetricFamily(
            "eventbus_outbox_oldest_unsent_age_seconds",
            "Seconds since the oldest unsent outbox row was written (0 when none).",
            labels=["table"],
        )
        failed = GaugeMetricFamily(
            "eventbus_outbox_failed_messages",
            "Outbox rows set aside as never publishable (too large, unroutable, unreadable).",
            labels=["table"],
        )
        relayed = CounterMetricFamily(
            "eventbus_outbox_relayed_messages",
            "Outbox rows this process published and marked sent.",
            labels=["table"],
        )
        failures = CounterMetricFamily(
            "eventbus_outbox_relay_failures",
            "Relay rounds that failed (database or broker) and were tried again.",
            labels=["table"],
        )
        for table, stats in sorted(self._stats.items()):
            count, age, set_aside = relay_backlog(stats)
            unsent.add_metric([table], count)
            oldest.add_metric([table], age)
            failed.add_metric([table], set_aside)
            relayed.add_metric([table], stats.relayed)
            failures.add_metric([table], stats.failures)
        yield from (unsent, oldest, failed, relayed, failures)
