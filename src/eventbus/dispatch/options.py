"""`SubscriptionOptions`: what ``subscribe``/``consume`` were asked for, validated once."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from eventbus.batch import Batch
from eventbus.breaker import CircuitBreaker
from eventbus.codecs.base import AsyncCodec, Codec
from eventbus.dedup.base import DedupStore
from eventbus.errors import ConfigurationError
from eventbus.message import Message
from eventbus.ratelimit.config import RateLimit
from eventbus.retry import DEFAULT_RETRY, RetryPolicy
from eventbus.transports.base import Destination

__all__ = ["DEFAULT_ACK_TIMEOUT", "SubscriptionOptions"]

_WEEK = 7 * 24 * 3600.0
DEFAULT_ACK_TIMEOUT = 15 * 60.0
"""Seconds a manual-ack delivery may stay unsettled before it is redelivered (DESIGN 8): below
RabbitMQ's 30-minute consumer timeout, which would close the channel instead."""


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    """One subscription's options (DESIGN 2), frozen and checked at decoration time.

    ``max_in_flight`` ``None`` becomes ``4 * concurrency``, or with ``batch`` room for two full
    batches per concurrent handler (one handled, one filling). ``dead_letter`` ``"auto"`` is
    resolved against the topic or queue by `Subscriber`. ``dedup`` is the store itself (the bus
    turns ``dedup=True`` into its default store).
    """

    concurrency: int = 1
    max_in_flight: int | None = None
    ack: Literal["auto", "manual"] = "auto"
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    """Manual acks: seconds until an unsettled delivery is redelivered; never unbounded."""
    retry: RetryPolicy = DEFAULT_RETRY
    dead_letter: str | None = "auto"
    dedup: DedupStore | None = None
    dedup_key: Callable[[Message], str] | None = None
    dedup_lease: float = 300.0
    """Seconds a dedup claim holds; others wait this long for a worker that died mid-handler."""
    dedup_ttl: float = _WEEK
    returns: Destination | None = None
    """Where the handler's return value is published (``publish_to=`` / ``send_to=``); a
    reply-to on the message takes precedence (`eventbus.dispatch.returns`)."""
    breaker: CircuitBreaker | None = None
    """The consumer circuit breaker (`eventbus.dispatch.breaker`); None: none."""
    timeout: float | None = None
    """Seconds one attempt of an async handler may run before it is cancelled and counts as
    failed (`eventbus.HandlerTimeoutError`); None: no limit. Refused on synchronous handlers,
    whose thread cannot be cancelled (DESIGN 8)."""
    on_expired: Literal["dead-letter", "drop"] = "dead-letter"
    """What happens to a message past its ``ttl``/``expires_at`` (`eventbus.dispatch.expiry`):
    dead-lettered as ``expired``, or acked unhandled and counted (``SubscriberStats.expired``)."""
    rate_limit: RateLimit | None = None
    """Handler starts per second (`eventbus.dispatch.throttle`); None: no limit, no cost."""
    batch: Batch | None = None
    """Hand messages to the handler in lists (`eventbus.dispatch.batches`); None: one by one."""
    codec: Codec | AsyncCodec | None = None
    """How this subscription decodes bodies; None: the bus's codec."""

    def __post_init__(self) -> None:
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {self.concurrency!r}")
        if self.batch is not None and not isinstance(self.batch, Batch):
            raise ConfigurationError(f"batch must be a Batch, got {self.batch!r}")
        if self.max_in_flight is None:
            room = 4 if self.batch is None else max(4, 2 * self.batch.max_size)
            object.__setattr__(self, "max_in_flight", room * self.concurrency)
        elif not isinstance(self.max_in_flight, int) or self.max_in_flight < self.concurrency:
            raise ConfigurationError(
                f"max_in_flight ({self.max_in_flight!r}) must be >= concurrency "
                f"({self.concurrency})"
            )
        if self.ack not in ("auto", "manual"):
            raise ConfigurationError(f"ack must be 'auto' or 'manual', got {self.ack!r}")
        if self.ack_timeout is None:
            raise ConfigurationError(
                "ack_timeout=None would let an unsettled manual-ack delivery hold its in-flight "
                f"slot forever; give seconds (default {DEFAULT_ACK_TIMEOUT:.0f})"
            )
        _positive("ack_timeout", self.ack_timeout)
        _positive("dedup_lease", self.dedup_lease)
        _positive("dedup_ttl", self.dedup_ttl)
        if self.timeout is not None:
            _positive("timeout", self.timeout)
        if self.on_expired not in ("dead-letter", "drop"):
            raise ConfigurationError(
                f"on_expired must be 'dead-letter' or 'drop', got {self.on_expired!r}"
            )
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {self.retry!r}")
        if self.breaker is not None and not isinstance(self.breaker, CircuitBreaker):
            raise ConfigurationError(f"breaker must be a CircuitBreaker, got {self.breaker!r}")
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise ConfigurationError(f"rate_limit must be a RateLimit, got {self.rate_limit!r}")
        if self.codec is not None and not (
            callable(getattr(self.codec, "encode", None))
            and callable(getattr(self.codec, "decode", None))
        ):
            raise ConfigurationError(f"codec must have encode and decode, got {self.codec!r}")
        if self.dedup_key is not None and self.dedup is None:
            raise ConfigurationError("dedup_key needs dedup=")
        if self.batch is not None:
            self._check_batch(self.batch)

    def _check_batch(self, batch: Batch) -> None:
        # Refused, never silently capped: a batch larger than the in-flight bound could only
        # ever be cut short by max_wait.
        if batch.max_size > self.in_flight_limit:
            raise ConfigurationError(
                f"Batch(max_size={batch.max_size}) is larger than max_in_flight "
                f"({self.in_flight_limit}): no batch could fill; raise max_in_flight or lower "
                "max_size"
            )
        if self.ack == "manual":
            raise ConfigurationError(
                "batch= settles when the handler returns; ack='manual' cannot be combined with "
                "it (take list[Delivery] and nack() or reject() the items that failed)"
            )
        if self.returns is not None:
            raise ConfigurationError(
                "publish_to=/send_to= publish one handler's result per message; they cannot be "
                "combined with batch= (publish from the handler instead)"
            )

    @property
    def in_flight_limit(self) -> int:
        assert self.max_in_flight is not None  # resolved in __post_init__
        return self.max_in_flight


def _positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be > 0 seconds (finite), got {value!r}")
