"""`Batch`: hand a subscription's messages to its handler in lists (DESIGN 11)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from eventbus.errors import ConfigurationError

__all__ = ["Batch"]


@dataclass(frozen=True, slots=True)
class Batch:
    """The handler gets up to ``max_size`` messages at once, as a ``list``.

    A batch goes to the handler as soon as ``max_size`` messages are there, or ``max_wait``
    seconds after the first of them arrived, whichever comes first. Messages of one key may
    share a batch, in order; a key is never in two batches that run at once, so per-key order
    holds with ``concurrency`` > 1 (`eventbus.dispatch.batches`).

    Returning acks every item the handler did not settle itself; raising applies the retry
    policy to the batch. With ``list[Delivery]`` the handler settles items one by one: an item
    ``nack()``-ed or ``reject()``-ed is retried through the broker or dead-lettered when the
    handler returns, while the rest is acked; the later items of a nacked item's key in the
    same batch are not acked but come back after it, in order, spending no attempt.
    """

    max_size: int
    max_wait: float = 0.1

    def __post_init__(self) -> None:
        size = self.max_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"Batch max_size must be an int >= 1, got {size!r}")
        wait = self.max_wait
        if (
            isinstance(wait, bool)
            or not isinstance(wait, int | float)
            or not math.isfinite(wait)
            or wait < 0
        ):
            raise ConfigurationError(f"Batch max_wait must be >= 0 seconds (finite), got {wait!r}")
