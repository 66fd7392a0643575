"""`Gcra`: the generic cell rate algorithm, as reservations; the arithmetic only, no I/O.

A token bucket of ``burst`` tokens refilled at ``per_second`` expressed as one number, the
*theoretical arrival time* (``tat``) of the next turn at the steady rate. A turn asked for at
``now`` starts at ``max(now, tat - tolerance)``, with ``tolerance = (burst - 1) / per_second``,
and pushes ``tat`` on by one interval. So ``burst`` turns start at once after an idle moment,
then one per interval: over any window of ``t`` seconds at most ``burst + t * per_second`` start.

Reserving rather than asking "is a token here now?" means a waiter learns at once how long to
sleep and sleeps exactly that long, in the order it asked: no polling, no herd of waiters waking
for one token. A turn reserved and then not used (the subscription stopped) is lost, which can
only lower the rate. The Redis script of `eventbus.ratelimit.redis` runs the same arithmetic on
the server's clock.
"""

from __future__ import annotations

import math

__all__ = ["Gcra"]


class Gcra:
    __slots__ = ("_interval", "_tat", "_tolerance")

    def __init__(self, per_second: float, burst: int) -> None:
        self._interval = 1.0 / per_second
        self._tolerance = (burst - 1) * self._interval
        self._tat = -math.inf

    def reserve(self, now: float) -> float:
        """Take the next turn; seconds from ``now`` until it starts (0.0: at once)."""
        tat = max(self._tat, now)
        start = max(now, tat - self._tolerance)
        self._tat = tat + self._interval
        return start - now
