"""`CircuitBreaker`: when a subscription stops handling messages because something it depends on
is down (DESIGN 11)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from eventbus.errors import ConfigurationError

__all__ = ["CircuitBreaker"]


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """A consumer circuit breaker for one subscription (``subscribe``/``consume(breaker=...)``).

    *Closed* (normal): the outcome of every handler attempt is recorded over the last
    ``window`` seconds. Once at least ``min_calls`` attempts were recorded there and the share
    that failed is ``failure_ratio`` or more, the breaker *opens*: the subscription stops
    fetching (it stays in its group), and handlers do not run -- deliveries already fetched and
    in-process retries wait where they are, keeping their place and their key's order. The
    attempt that tripped it and every attempt that fails while it is open or half-open spend no
    attempt: an outage dead-letters nothing. After ``open_for`` seconds it is *half-open*: one
    attempt goes through as a probe; its success closes the breaker (fetching resumes, the
    waiting deliveries run), its failure opens it for another ``open_for``.

    What counts as a failure: an attempt the retry policy would retry (an exception the policy
    retries, or `Retry`). `Reject`, an error the policy gives up on and an undecodable body say
    something about one message, not about an outage: they are not counted and dead-letter as
    without a breaker.

    Each worker process has its own breaker per subscription; processes do not share state.
    Until the breaker trips, failed attempts spend attempts as usual: with few messages in
    flight, keep ``min_calls`` at or below the retry policy's ``max_attempts`` (or give more
    attempts) so that the first failing messages of an outage cannot run out of attempts before
    the breaker opens.
    """

    failure_ratio: float = 0.5
    min_calls: int = 10
    window: float = 30.0
    """Seconds of attempt outcomes the failure ratio is taken over."""
    open_for: float = 10.0
    """Seconds the breaker stays open before a probe attempt."""

    def __post_init__(self) -> None:
        ratio = self.failure_ratio
        if not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ConfigurationError(
                f"CircuitBreaker.failure_ratio must be > 0 and <= 1, got {ratio!r}"
            )
        if not isinstance(self.min_calls, int) or self.min_calls < 1:
            raise ConfigurationError(
                f"CircuitBreaker.min_calls must be an int >= 1, got {self.min_calls!r}"
            )
        for name in ("window", "open_for"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(
                    f"CircuitBreaker.{name} must be > 0 seconds (finite), got {value!r}"
                )
