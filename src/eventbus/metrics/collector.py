"""The Prometheus view of one bus, built at scrape time from what `BusMetrics` holds.

A custom collector rather than ``prometheus_client`` counters: the bus already counts in
`SubscriberStats`, so a scrape reads those counters and the hot path does no metric work.
Names follow the OpenTelemetry messaging conventions (``messaging.client.consumed.messages``,
``messaging.process.duration``, ...) with the ``eventbus_`` prefix; docs/observability.md lists
them. Subscription metrics carry ``destination`` (topic or queue), ``kind`` (topic|queue),
``group`` ("" for queues and broadcasts) and ``handler``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from eventbus.dispatch.subscriber import SubscriberStats
from eventbus.metrics.recorder import BusMetrics, SubscriptionMetrics

__all__ = ["BREAKER_STATE", "LAG", "QUEUE_DEPTH", "BusCollector"]

LABELS = ["destination", "kind", "group", "handler"]
LAG = "eventbus_consumer_lag_messages"
QUEUE_DEPTH = "eventbus_queue_depth_messages"
BREAKER_STATE = "eventbus_breaker_state"

_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("eventbus_consumed_messages", "received", "Messages received from the broker."),
    ("eventbus_handled_messages", "handled", "Messages whose handler returned normally."),
    ("eventbus_failed_attempts", "failed_attempts", "Handler attempts that raised."),
    ("eventbus_retried_messages", "retried", "Failed attempts followed by another attempt."),
    (
        "eventbus_dedup_skipped_messages",
        "duplicates",
        "Messages acked without running the handler: already processed (deduplication).",
    ),
    (
        "eventbus_redelivered_messages",
        "redelivered",
        "Messages sent back through the broker (nack, via_broker retries, ack_timeout).",
    ),
    (
        "eventbus_lost_messages",
        "lost",
        "Deliveries the transport took back (partition revoked, channel lost).",
    ),
    (
        "eventbus_republish_failures",
        "republish_failures",
        "Dead-letter or redelivery publishes that failed and were tried again.",
    ),
    (
        "eventbus_subscription_restarts",
        "restarts",
        "Times a subscription broke and was established again.",
    ),
    (
        "eventbus_breaker_opened",
        "breaker_opened",
        "Times the subscription's circuit breaker opened (a trip or a failed probe).",
    ),
    (
        "eventbus_rate_limited_starts",
        "throttled",
        "Handler starts that waited for their turn of the subscription's rate limit.",
    ),
    (
        "eventbus_rate_limited_seconds",
        "throttled_seconds",
        "Seconds handler starts waited for the rate limit, added up.",
    ),
)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}


def _labels(sub: SubscriptionMetrics) -> list[str]:
    s = sub.subscriber
    return [s.name, s.kind, s.group or "", s.handler.name]


class BusCollector(Collector):
    def __init__(self, metrics: BusMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: names are fixed and unique

    def collect(self) -> Iterator[Metric]:
        subs = list(self._metrics.subscriptions)
        yield from _counters(subs)
        yield from _histograms(subs)
        yield from _in_flight(subs)
        yield from _breaker(subs)
        yield from _publishes(self._metrics)
        yield from _requests(self._metrics)
        yield from _backlog(self._metrics)


def _counters(subs: list[SubscriptionMetrics]) -> Iterator[Metric]:
    for name, field, doc in _COUNTERS:
        family = CounterMetricFamily(name, doc, labels=LABELS)
        for sub in subs:
            value: int = getattr(sub.subscriber.stats, field)
            family.add_metric(_labels(sub), value)
        yield family
    letters = CounterMetricFamily(
        "eventbus_dead_lettered_messages",
        "Messages dead-lettered (or dropped with dead_letter=None), by reason.",
        labels=[*LABELS, "reason"],
    )
    for sub in subs:
        stats: SubscriberStats = sub.subscriber.stats
        for reason, count in sorted(stats.dead_letter_reasons.items()):
            letters.add_metric([*_labels(sub), reason], count)
    yield letters


def _histograms(subs: list[SubscriptionMetrics]) -> Iterator[Metric]:
    duration = HistogramMetricFamily(
        "eventbus_process_duration_seconds",
        "Seconds each handler attempt ran, middleware included, failed attempts too.",
        labels=LABELS,
    )
    latency = HistogramMetricFamily(
        "eventbus_publish_to_handle_seconds",
        "Seconds from a message's publish time to the start of each handler attempt.",
        labels=LABELS,
    )
    for sub in subs:
        duration.add_metric(_labels(sub), sub.duration.cumulative(), sub.duration.sum)
        latency.add_metric(_labels(sub), sub.latency.cumulative(), sub.latency.sum)
    yield duration
    yield latency


def _in_flight(subs: list[SubscriptionMetrics]) -> Iterator[Metric]:
    current = GaugeMetricFamily(
        "eventbus_in_flight_messages", "Messages fetched and not settled yet.", labels=LABELS
    )
    limit = GaugeMetricFamily(
        "eventbus_in_flight_limit", "The max_in_flight bound of the subscription.", labels=LABELS
    )
    saturation = GaugeMetricFamily(
        "eventbus_in_flight_saturation_ratio",
        "In flight / max_in_flight: 1 means the fetcher waits for room.",
        labels=LABELS,
    )
    oldest = GaugeMetricFamily(
        "eventbus_oldest_unsettled_age_seconds",
        "Seconds since the oldest message fetched and not settled yet was published.",
        labels=LABELS,
    )
    for sub in subs:
        labels = _labels(sub)
        now, bound = sub.in_flight()
        current.add_metric(labels, now)
        limit.add_metric(labels, bound)
        saturation.add_metric(labels, now / bound if bound else 0.0)
        oldest.add_metric(labels, sub.oldest_unsettled_age())
    yield from (current, limit, saturation, oldest)


def _breaker(subs: list[SubscriptionMetrics]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open (subscriptions with a breaker).",
        labels=LABELS,
    )
    for sub in subs:
        current = sub.subscriber.stats.breaker_state
        if current is not None:
            state.add_metric(_labels(sub), BREAKER_STATES[current])
    yield state


def _publishes(metrics: BusMetrics) -> Iterator[Metric]:
    sent = CounterMetricFamily(
        "eventbus_published_messages",
        "Messages the bus published and the broker confirmed.",
        labels=["destination", "kind"],
    )
    failed = CounterMetricFamily(
        "eventbus_publish_errors",
        "Messages the bus published and the broker did not confirm.",
        labels=["destination", "kind"],
    )
    for (name, kind), (ok, errors) in sorted(metrics.published.items()):
        sent.add_metric([name, kind], ok)
        failed.add_metric([name, kind], errors)
    yield sent
    yield failed


def _requests(metrics: BusMetrics) -> Iterator[Metric]:
    stats = metrics.requests
    ended = CounterMetricFamily(
        "eventbus_requests",
        "Requests this bus made (bus.request), by how they ended.",
        labels=["outcome"],
    )
    ended.add_metric(["replied"], stats.replied)
    ended.add_metric(["failed"], stats.failed)
    ended.add_metric(["timed_out"], stats.timed_out)
    yield ended
    yield CounterMetricFamily(
        "eventbus_late_replies",
        "Replies no request waited for any more (after its timeout, or a topic request's later "
        "replies): dropped.",
        value=stats.late,
    )


def _backlog(metrics: BusMetrics) -> Iterator[Metric]:
    lag = GaugeMetricFamily(
        LAG,
        "Messages behind the group's committed offset, per partition (Kafka).",
        labels=["destination", "group", "partition"],
    )
    depth = GaugeMetricFamily(
        QUEUE_DEPTH,
        "Messages ready in the queue, not yet delivered (RabbitMQ, memory).",
        labels=["destination", "group", "queue"],
    )
    seen: set[tuple[str, str, str]] = set()
    for sub, (kind, waiting) in list(metrics.backlog.items()):
        s = sub.subscriber
        family = lag if kind == "lag" else depth
        for where, count in sorted(waiting.items()):
            labels = (s.name, s.group or "", where)
            if labels not in seen:  # two handlers of one group share its backlog
                seen.add(labels)
                family.add_metric(list(labels), count)
    yield lag
    yield depth
