"""What the bus records for its metrics while it runs; read by the collector at scrape time.

Counters that exist anyway -- `SubscriberStats`, kept for logs and tests -- are not counted a
second time: the collector reads them when scraped. What only metrics need is recorded here,
and only when metrics are on: the two histograms (a wrapper around the handler chain, built
once per subscription, so a bus without metrics runs the very same code as before), publish
counts, and the last backlog read from the broker.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from eventbus.dispatch.inflight import InFlight
from eventbus.dispatch.invoke import Handler
from eventbus.dispatch.settle import DeliveryState
from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import PublishError
from eventbus.message import Delivery, Message
from eventbus.metrics.config import MetricsConfig
from eventbus.metrics.histogram import DURATION_BUCKETS, LATENCY_BUCKETS, Histogram
from eventbus.replies import RequestStats
from eventbus.transports.base import Backlog, Destination, Transport

__all__ = ["BusMetrics", "SubscriptionMetrics"]


class SubscriptionMetrics:
    """One subscription's histograms and a view of its in-flight deliveries."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.duration = Histogram(DURATION_BUCKETS)
        """Seconds each handler attempt ran (middleware included), failed ones too; not those
        cancelled because the delivery was taken back or the bus stopped."""
        self.latency = Histogram(LATENCY_BUCKETS)
        """Seconds from the message's publish time to the start of each handler attempt."""
        self._in_flight: InFlight[DeliveryState] | None = None

    def timed(self, handler: Handler) -> Handler:
        """``handler`` observing both histograms: the only per-message work metrics add, so
        it is written out inline (under 0.5 us an attempt; method calls would add half again)."""
        duration, latency = self.duration, self.latency
        d_bounds, d_counts, l_bounds, l_counts = (
            duration.bounds,
            duration.counts,
            latency.bounds,
            latency.counts,
        )
        # One clock for both: the wall clock's resolution is fine for handler durations, and
        # one call less per attempt.
        clock = time.time
        cancelled = anyio.get_cancelled_exc_class()

        async def call(d: Delivery) -> None:
            start = clock()
            # A clock skewed against the publisher's could make it negative: bucket 0 then.
            waited = start - d.message.timestamp.timestamp()
            l_counts[bisect_left(l_bounds, waited)] += 1
            latency.sum += waited if waited > 0.0 else 0.0
            try:
                await handler(d)
            except cancelled:
                raise  # taken back (revoked, shutting down): no attempt to time
            except BaseException:
                took = clock() - start
                d_counts[bisect_left(d_bounds, took)] += 1
                duration.sum += took
                raise
            took = clock() - start
            d_counts[bisect_left(d_bounds, took)] += 1
            duration.sum += took

        return call

    async def timed_batch(
        self, messages: Sequence[Message], call: Callable[[], Awaitable[object]]
    ) -> None:
        """One call of a batch handler (``batch=``): each message's publish-to-handle latency,
        and the call's duration (one observation for the batch)."""
        start = time.time()
        for message in messages:
            self.latency.observe(max(0.0, start - message.timestamp.timestamp()))
        try:
            await call()
        except anyio.get_cancelled_exc_class():
            raise  # taken back or stopping: no call to time
        except BaseException:
            self.duration.observe(time.time() - start)
            raise
        self.duration.observe(time.time() - start)

    def watch(self, in_flight: InFlight[DeliveryState]) -> None:
        self._in_flight = in_flight

    def in_flight(self) -> tuple[int, int]:
        """Deliveries fetched and not settled, and the limit on them (``max_in_flight``)."""
        limit = self.subscriber.options.in_flight_limit
        return (len(self._in_flight) if self._in_flight is not None else 0), limit

    def oldest_unsettled_age(self) -> float:
        """Seconds since the oldest unsettled message was published (0 when none is). Walks
        the in-flight set (at most ``max_in_flight``) at scrape time rather than stamping
        every delivery when fetched."""
        if self._in_flight is None:
            return 0.0
        stamps = [s.raw.message.timestamp.timestamp() for s in self._in_flight.items()]
        return max(0.0, time.time() - min(stamps)) if stamps else 0.0


@dataclass(slots=True)
class BusMetrics:
    """Everything the collector reads of one bus."""

    config: MetricsConfig
    subscriptions: list[SubscriptionMetrics] = field(default_factory=list)
    published: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """``(destination, kind)`` -> ``[published, errors]``, in messages."""
    backlog: dict[SubscriptionMetrics, tuple[str, Mapping[str, int]]] = field(default_factory=dict)
    """The last backlog read of each subscription that has one: ``("lag" | "depth",
    waiting)`` as `Capabilities.backlog` and `Backlog.waiting` say."""
    requests: RequestStats = field(default_factory=RequestStats)
    """The bus's own request counts (`EventBus.request_stats`), read at scrape time."""

    def subscription(self, subscriber: Subscriber) -> SubscriptionMetrics:
        metrics = SubscriptionMetrics(subscriber)
        self.subscriptions.append(metrics)
        return metrics

    async def publish(
        self, transport: Transport, to: Destination, messages: Sequence[Message]
    ) -> None:
        """``transport.publish``, counting the messages confirmed and those that failed."""
        try:
            await transport.publish(to, messages)
        except PublishError as exc:
            failed = min(len(exc.failures), len(messages)) or len(messages)
            self.count_publish(to, len(messages) - failed, failed)
            raise
        except Exception:
            self.count_publish(to, 0, len(messages))
            raise
        self.count_publish(to, len(messages), 0)

    def count_publish(self, to: Destination, sent: int, failed: int) -> None:
        counts = self.published.get((to.name, to.kind))
        if counts is None:
            counts = self.published[(to.name, to.kind)] = [0, 0]
        counts[0] += sent
        counts[1] += failed

    def set_backlog(self, of: SubscriptionMetrics, kind: str, backlog: Backlog | None) -> None:
        if backlog is None:
            self.backlog.pop(of, None)
        else:
            self.backlog[of] = (kind, dict(backlog.waiting))
