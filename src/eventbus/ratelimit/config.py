"""`RateLimit`: how many handler starts per second one subscription may make, and the burst."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from eventbus.errors import ConfigurationError

__all__ = ["RateLimit", "SharedRateLimiter"]


@runtime_checkable
class SharedRateLimiter(Protocol):
    """Where processes that share a limit take their turns (`RedisRateLimiter`).

    Each call reserves one turn and says how long its caller must wait for it: turns are handed
    out in call order, so waiters never race each other and the limit is never exceeded, even
    when a waiter gives its turn up (it is then simply not used). Task-safe.
    """

    async def reserve(self, scope: str, per_second: float, burst: int) -> float:
        """Reserve the next turn of the limit named by ``scope`` (the subscription's topic and
        group, or queue); returns the seconds until it comes (0.0: now). Raises when the
        backend cannot be reached: the caller waits and asks again, spending no attempt."""
        ...

    async def close(self) -> None:
        """Release connections; the next `reserve` opens them again."""
        ...


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``per_second`` handler starts per second on average, ``burst`` of them at once.

    The limit is a generic cell rate (a token bucket that holds ``burst`` tokens, refilled at
    ``per_second``): after an idle moment ``burst`` handlers may start at once, then one every
    ``1 / per_second`` seconds. Every handler *start* takes a turn, retries in process included:
    a limit protects what the handler calls, and a retry calls it again. A message skipped as a
    duplicate may have spent one (the turn is taken before the dedup claim, so a long wait never
    eats into the claim's lease). A handler that waits for its turn holds no concurrency slot and
    is never nacked; while a wait is long, fetching is paused (`eventbus.dispatch.throttle`).

    ``shared=None``: the limit holds per subscription in this process. ``shared=`` a
    `SharedRateLimiter` (`RedisRateLimiter`): all processes consuming the same topic and group
    (or queue) share one limit.
    """

    per_second: float
    burst: int = 1
    shared: SharedRateLimiter | None = None

    def __post_init__(self) -> None:
        rate = self.per_second
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not math.isfinite(rate)
            or rate <= 0
        ):
            raise ConfigurationError(
                f"RateLimit.per_second must be a finite number > 0, got {rate!r}"
            )
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ConfigurationError(f"RateLimit.burst must be an int >= 1, got {self.burst!r}")
        if self.shared is not None and not isinstance(self.shared, SharedRateLimiter):
            raise ConfigurationError(
                "RateLimit.shared must be None or a shared limiter such as "
                f"RedisRateLimiter(url), got {type(self.shared).__name__}"
            )
