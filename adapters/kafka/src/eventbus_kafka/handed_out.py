"""The deliveries a subscription handed out and that are not settled yet, per partition tracker.

Counting them bounds what the core holds (``spec.prefetch``); keeping the delivery objects
themselves, per tracker, lets a revocation wait for exactly those of the revoked partitions and
report the ones still unsettled to the core (`DeliveryOwner.lost`) before the partitions go.

Invariant: a delivery is in here from the moment it is yielded until the first of its settle
(`settle`) or its report as lost (`detach`), and never again after that. Bookkeeping only; the
one event tells waiters that something left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from eventbus_kafka.delivery import KafkaDelivery
from eventbus_kafka.offsets import PartitionOffsets

__all__ = ["HandedOut"]


class HandedOut:
    def __init__(self) -> None:
        self._by_tracker: dict[PartitionOffsets, dict[KafkaDelivery, None]] = {}
        """Per tracker, its unsettled deliveries in the order they were handed out (a dict
        as an ordered set: identity, not offset, since a re-read can repeat an offset)."""
        self.count = 0
        self.left = asyncio.Event()
        """Set whenever a delivery leaves (settled or detached); waiters clear it first."""

    def add(self, delivery: KafkaDelivery) -> None:
        self._by_tracker.setdefault(delivery.taken.tracker, {})[delivery] = None
        self.count += 1

    def add_all(self, deliveries: list[KafkaDelivery]) -> None:
        """`add` of each of ``deliveries``, in order."""
        by_tracker = self._by_tracker
        tracker: PartitionOffsets | None = None
        held: dict[KafkaDelivery, None] = {}
        for delivery in deliveries:
            if delivery.taken.tracker is not tracker:  # runs of one partition are usual
                tracker = delivery.taken.tracker
                found = by_tracker.get(tracker)
                held = by_tracker[tracker] = {} if found is None else found
            held[delivery] = None
        self.count += len(deliveries)

    def settle(self, delivery: KafkaDelivery) -> bool:
        """``delivery`` was settled; False when it was not in here (detached before)."""
        tracker = delivery.taken.tracker
        held = self._by_tracker.get(tracker)
        if held is None or held.pop(delivery, False) is False:
            return False
        if not held:
            del self._by_tracker[tracker]
        self.count -= 1
        self.left.set()
        return True

    def pending(self, trackers: Iterable[PartitionOffsets]) -> int:
        return sum(len(self._by_tracker.get(t, ())) for t in trackers)

    def detach(self, trackers: Iterable[PartitionOffsets]) -> list[KafkaDelivery]:
        """Take out every unsettled delivery of ``trackers`` and make their settles no-ops;
        returns them (in the order they were handed out, per tracker)."""
        lost: list[KafkaDelivery] = []
        for tracker in trackers:
            lost += self._by_tracker.pop(tracker, {})
        for delivery in lost:
            delivery.detach()
        self.count -= len(lost)
        if lost:
            self.left.set()
        return lost

    def detach_all(self) -> list[KafkaDelivery]:
        return self.detach(list(self._by_tracker))
