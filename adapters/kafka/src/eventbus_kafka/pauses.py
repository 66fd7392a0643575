"""Which partitions the consumer must not fetch right now, and why.

Every partition pauses when the subscription is full (its read-ahead buffer stayed full while
nothing was handed out for a while: aiokafka stops fetching and drops what it prefetched instead
of buffering without bound), when the core paused it (`Subscription.pause`: a circuit breaker,
a rate limit), or once it stopped. One partition alone pauses while the retry record at its head
is not due (the others keep flowing, and nothing busy-loops), or while its offset window is
full: one record unfinished with ``offset_window`` records tracked behind it. The reasons
combine: a resume lifts the core's pause only, so a partition waiting for a due time stays
paused. A paused
consumer stays in its group: heartbeats go on, and the fetch loop keeps polling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Pauses"]

TP = Any  # aiokafka TopicPartition


class Pauses:
    def __init__(self) -> None:
        self.full = False
        self.requested = False
        """`Subscription.pause` was called (and not `resume`)."""
        self.stopped = False
        self._due: dict[TP, float] = {}
        """Partition -> unix time its head retry record is due."""
        self.held: set[TP] = set()
        """Partitions whose offset window is full behind one unfinished record."""

    def delay(self, tp: TP, due: float) -> None:
        self._due[tp] = due

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._due.pop(tp, None)
            self.held.discard(tp)

    def hold(self, tp: TP) -> None:
        self.held.add(tp)

    def release_held(self, has_room: Callable[[TP], bool]) -> bool:
        """Stop holding partitions that have room again; True if any had."""
        free = {tp for tp in self.held if has_room(tp)}
        self.held -= free
        return bool(free)

    def due_in(self) -> float:
        """Seconds until the next delayed partition is due (inf when none is delayed)."""
        if not self._due:
            return math.inf
        return max(0.0, min(self._due.values()) - time.time())

    def release_due(self) -> bool:
        """Stop delaying partitions whose record is due; True if any was."""
        now = time.time()
        due = [tp for tp, at in self._due.items() if at <= now]
        for tp in due:
            del self._due[tp]
        return bool(due)

    def apply(self, consumer: Any, assigned: set[TP]) -> None:
        """Make the consumer's paused partitions match what is wanted now."""
        assigned = assigned & set(consumer.assignment())
        everything = self.full or self.requested or self.stopped
        want = set(assigned) if everything else (set(self._due) | self.held) & assigned
        paused = set(consumer.paused())
        if want - paused:
            consumer.pause(*(want - paused))
        if (paused - want) & assigned:
            consumer.resume(*((paused - want) & assigned))
