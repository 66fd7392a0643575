"""`RetryPolicy`: how many attempts, and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from eventbus.errors import ConfigurationError

__all__ = ["DEFAULT_RETRY", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter (DESIGN 3.3).

    The wait after failed attempt ``n`` is ``min(max_delay, initial_delay * multiplier**(n-1))``,
    or a uniform draw between 0 and that when ``jitter`` is on, so that many failing workers do
    not retry in lockstep. After ``max_attempts`` attempts the message is dead-lettered.

    ``retry_on``: exceptions worth another attempt; ``give_up_on``: exceptions that dead-letter at
    once (checked first). ``via_broker``: instead of waiting in process (the message's key lane
    waits, other keys flow), re-publish to a delayed-retry destination and ack; suited to long
    delays, but order for that key is no longer kept.
    """

    max_attempts: int = 3
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()
    via_broker: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}"
            )
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("RetryPolicy delays must be >= 0 seconds")
        if self.multiplier < 1:
            raise ConfigurationError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")

    def retryable(self, error: BaseException) -> bool:
        if isinstance(error, self.give_up_on):
            return False
        return isinstance(error, self.retry_on)

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the 1-based ``failed_attempt`` before the next one."""
        try:
            growth = self.multiplier ** (failed_attempt - 1)
        except OverflowError:  # a huge attempt count from a foreign header: the cap applies
            growth = float("inf")
        ceiling = min(self.max_delay, self.initial_delay * growth) if self.initial_delay else 0.0
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0.0, ceiling)


DEFAULT_RETRY = RetryPolicy()
"""Applied when a handler has no ``retry=``: 3 attempts with backoff, never endless redelivery."""
