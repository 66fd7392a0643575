"""Hearing how each delivery was settled: the hook `eventbus.testing.TestBus` listens on.

The pipeline decides and settles (`runner.py`, `settle.py`); an observer is told afterwards and
changes nothing, so tests watch the one real pipeline instead of a copy of it (DESIGN 5). It is
set per subscriber (`Subscriber.observer`) and is None unless a test harness sets it: the hot
path then pays one attribute check per settle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from eventbus.dispatch.deadletter import DeadLetterReason
from eventbus.transports.base import RawDelivery

if TYPE_CHECKING:
    from eventbus.message import Delivery

__all__ = ["BatchCall", "Observer", "Settled", "Settlement"]

Settled = Literal["acked", "dead-lettered", "redelivered", "released", "unsettled", "expired"]
"""``acked``: done (handled, or skipped as a duplicate); ``expired``: acked unhandled, past its
expiry, with ``on_expired="drop"``; ``dead-lettered`` (or dropped with
``dead_letter=None``); ``redelivered``: sent back for another attempt (through the broker, or
requeued on a broadcast); ``released``: given back unsettled, the subscription stopping;
``unsettled``: a manual-ack handler returned without settling (not a settle: the delivery
stays in flight until settled or ``ack_timeout``, and is then reported again)."""


@dataclass(frozen=True, slots=True)
class Settlement:
    raw: RawDelivery
    how: Settled
    attempt: int
    """The attempt that ended this way (1-based)."""
    reason: DeadLetterReason | None = None
    error: BaseException | None = None
    """Why the last attempt failed, for ``dead-lettered`` and ``redelivered``."""
    release: Callable[[], Awaitable[None]] | None = None
    """For ``unsettled``: give the delivery back as a stopping subscription would."""


@dataclass(frozen=True, slots=True)
class BatchCall:
    """A batch handler was called (the per-message handler's calls are seen by middleware)."""

    items: list[tuple[RawDelivery, Delivery]]
    args: dict[str, object]
    error: BaseException | None
    """What the call raised; None when it returned."""


Observer = Callable[[Settlement | BatchCall], None]
"""Called synchronously in the settling (or calling) task; it must not raise or block."""
