"""A registered handler and its options, as the dispatcher needs them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from eventbus.dedup.base import DedupStore
from eventbus.dispatch.handler import HandlerSpec
from eventbus.message import Message
from eventbus.retry import RetryPolicy
from eventbus.transports.base import Kind, SubscriptionSpec

__all__ = ["Subscriber", "SubscriberStats"]


@dataclass(slots=True)
class SubscriberStats:
    """Counters of one subscription in this process (for logs, tests and health checks)."""

    received: int = 0
    handled: int = 0
    """Handler returned normally."""
    failed_attempts: int = 0
    retried: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    """Skipped by deduplication (acked without running the handler)."""
    redelivered: int = 0
    """Sent back through the broker (``nack``, ``via_broker`` retries, ``ack_timeout``)."""


@dataclass(slots=True)
class Subscriber:
    name: str
    kind: Kind
    group: str | None
    handler: HandlerSpec
    concurrency: int
    max_in_flight: int
    ack: Literal["auto", "manual"]
    ack_timeout: float | None
    retry: RetryPolicy
    dead_letter: str | None
    dedup: DedupStore | None
    dedup_key: Callable[[Message], str] | None
    dedup_lease: float = 300.0
    dedup_ttl: float = 7 * 24 * 3600.0
    stats: SubscriberStats = field(default_factory=SubscriberStats)

    @property
    def scope(self) -> str:
        """Dedup scope: the same message is processed once per group (or queue)."""
        return f"{self.name}/{self.group}" if self.group else self.name

    @property
    def spec(self) -> SubscriptionSpec:
        return SubscriptionSpec(
            name=self.name, kind=self.kind, group=self.group, prefetch=self.max_in_flight
        )

    def describe(self) -> str:
        where = f"{self.kind} {self.name}" + (f" group {self.group}" if self.group else "")
        return f"{self.handler.name} <- {where}"
