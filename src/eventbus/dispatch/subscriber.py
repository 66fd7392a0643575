"""A registered handler with its options and counters, as the dispatcher needs them."""

from __future__ import annotations

from dataclasses import dataclass, field

from eventbus.dispatch.deadletter import default_dead_letter_name
from eventbus.dispatch.handler import HandlerSpec
from eventbus.dispatch.observe import Observer
from eventbus.dispatch.options import SubscriptionOptions
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
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    """``dead_lettered`` by `DeadLetterReason` (``rejected``, ``retries-exhausted``, ...)."""
    timed_out: int = 0
    """Attempts cancelled by the subscription's ``timeout`` (also in ``failed_attempts``)."""
    expired: int = 0
    """Messages found past their expiry before an attempt: dead-lettered as ``expired`` (also
    in ``dead_lettered``), or acked unhandled with ``on_expired="drop"``."""
    duplicates: int = 0
    """Skipped by deduplication (acked without running the handler)."""
    redelivered: int = 0
    """Sent back through the broker (``nack``, ``via_broker`` retries, ``ack_timeout``)."""
    lost: int = 0
    """Handed-out deliveries the transport took back (revocation, channel loss)."""
    republish_failures: int = 0
    """Dead-letter or redelivery publishes that failed and were tried again."""
    restarts: int = 0
    """Times the transport subscription broke and was established again."""
    breaker_opened: int = 0
    """Times the circuit breaker opened: a trip, or a failed probe (`CircuitBreaker`)."""
    breaker_state: str | None = None
    """``closed``, ``open`` or ``half-open``; None without a circuit breaker."""
    throttled: int = 0
    """Handler starts that waited for their turn of the ``rate_limit``."""
    throttled_seconds: float = 0.0
    """Seconds those starts waited, added up (more than wall time when several waited)."""

    def count_dead_letter(self, reason: str) -> None:
        self.dead_lettered += 1
        self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + 1


@dataclass(slots=True)
class Subscriber:
    name: str
    kind: Kind
    group: str | None
    handler: HandlerSpec
    options: SubscriptionOptions
    stats: SubscriberStats = field(default_factory=SubscriberStats)
    observer: Observer | None = None
    """Told how each delivery was settled (`eventbus.testing.TestBus` sets it); None in
    production."""

    @property
    def dead_letter(self) -> str | None:
        """The dead-letter queue's name, or None when dead letters are turned off."""
        name = self.options.dead_letter
        if name == "auto":
            return default_dead_letter_name(self.name, self.kind, self.group)
        return name

    @property
    def broadcast(self) -> bool:
        """An ephemeral topic subscription without a group: nothing to target a retry at."""
        return self.kind == "topic" and self.group is None

    @property
    def scope(self) -> str:
        """Dedup scope: the same message is processed once per group (or queue)."""
        return f"{self.name}/{self.group}" if self.group else self.name

    @property
    def spec(self) -> SubscriptionSpec:
        return SubscriptionSpec(
            name=self.name, kind=self.kind, group=self.group, prefetch=self.options.in_flight_limit
        )

    def describe(self) -> str:
        where = f"{self.kind} {self.name}" + (f" group {self.group}" if self.group else "")
        return f"{self.handler.name} <- {where}"
