"""`Backoff`: capped exponential waits with full jitter, for reconnects and re-subscribes.

One copy for the core and every adapter. The wait resets only after the thing it guards has
stayed up for ``stable_after`` seconds: a connection that dies seconds after it opened keeps
backing off instead of reconnecting in a tight loop.
"""

from __future__ import annotations

import random
import time

__all__ = ["Backoff"]


class Backoff:
    def __init__(
        self,
        initial: float = 0.1,
        cap: float = 5.0,
        *,
        stable_after: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.stable_after = stable_after
        self._rng = rng or random.Random()
        self._failures = 0
        self._up_since: float | None = None

    def next(self) -> float:
        """Seconds to wait before the next try (a uniform draw up to the capped ceiling)."""
        if self._up_since is not None and time.monotonic() - self._up_since >= self.stable_after:
            self._failures = 0
        self._up_since = None
        ceiling = min(self.cap, self.initial * 2.0 ** min(self._failures, 32))
        self._failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def up(self) -> None:
        """The guarded thing works again; the waits reset once it has stayed up long enough."""
        self._up_since = time.monotonic()

    @property
    def failures(self) -> int:
        return self._failures
