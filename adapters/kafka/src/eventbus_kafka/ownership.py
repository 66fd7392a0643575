"""Which partitions a consumer owns right now, each with its `PartitionOffsets`.

The rebalance callbacks change it; every change bumps ``epoch`` so work started before a
rebalance (resolving positions, say) can tell that it is stale. aiokafka's rebalances are eager:
every partition is revoked before the new assignment arrives, even one that comes back.

Invariant: a record is handed out only while `current` says its tracker is: owned, not revoked
and not draining (being revoked: the new owner gets the partition from the commit that follows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eventbus_kafka.committer import Commit
from eventbus_kafka.offsets import PartitionOffsets, decode_done

__all__ = ["Ownership"]

TP = Any  # aiokafka TopicPartition


class Ownership:
    def __init__(self, *, grouped: bool) -> None:
        self.grouped = grouped
        """A consumer group assigns the partitions (False: a broadcast assigns them all)."""
        self.trackers: dict[TP, PartitionOffsets] = {}
        self.assigned: set[TP] = set()
        self.rebalancing = grouped
        """True between a revocation and the next assignment (and before the first one)."""
        self.epoch = 0
        self.adopt_needed = True
        """Assigned partitions may lack a tracker: their positions must be resolved."""
        self.draining: set[PartitionOffsets] = set()
        """Trackers of partitions being revoked: nothing more of them is handed out."""

    def current(self, tracker: PartitionOffsets) -> bool:
        """True while records of ``tracker`` may be handed out (and released ones again)."""
        return not tracker.revoked and tracker not in self.draining

    def revoke(self, revoked: Iterable[TP]) -> dict[TP, tuple[PartitionOffsets, Commit]]:
        """Freeze the trackers of ``revoked`` and return what to commit for them: late
        settles of their records are no-ops from now on."""
        self.epoch += 1
        self.rebalancing = True
        self.adopt_needed = True
        frozen: dict[TP, tuple[PartitionOffsets, Commit]] = {}
        for tp in revoked:
            self.assigned.discard(tp)
            tracker = self.trackers.pop(tp, None)
            if tracker is None:
                continue
            state = tracker.revoke()
            if state != tracker.committed:
                frozen[tp] = (tracker, state)
        return frozen

    def assign(self, assigned: Iterable[TP]) -> None:
        self.epoch += 1
        self.assigned = set(assigned)
        self.rebalancing = False
        self.adopt_needed = True
        for tp in list(self.trackers):
            if tp not in self.assigned:
                self.trackers.pop(tp).revoke()

    def revoke_all(self) -> None:
        for tracker in self.trackers.values():
            tracker.revoke()
        self.trackers.clear()
        self.assigned.clear()

    def unadopted(self) -> list[TP]:
        return [tp for tp in self.assigned if tp not in self.trackers]

    def tracker_for(self, tp: TP, first_offset: int) -> PartitionOffsets:
        """The partition's tracker; records fetched before the assignment was adopted start
        one at the first record (nothing before it is this consumer's to finish)."""
        tracker = self.trackers.get(tp)
        if tracker is None:
            tracker = self.trackers[tp] = PartitionOffsets(first_offset)
        return tracker

    def adopt(
        self,
        positions: Mapping[TP, int],
        committed: Mapping[tuple[str, int], tuple[int, str]],
    ) -> dict[TP, tuple[PartitionOffsets, Commit]]:
        """Track partitions from their resolved positions. A partition resuming from the
        group's commit skips what that commit's metadata lists as finished; one that had no
        commit is returned to be committed now ("pinned"), so a later rebalance cannot
        re-resolve its start past a message published in between."""
        pins: dict[TP, tuple[PartitionOffsets, Commit]] = {}
        for tp, position in positions.items():
            if tp in self.trackers:
                continue
            offset, metadata = committed.get((tp.topic, tp.partition), (-1, ""))
            if 0 <= offset == position:
                tracker = PartitionOffsets(position, decode_done(position, metadata))
                tracker.committed = (offset, metadata)
            else:
                tracker = PartitionOffsets(position)
                pins[tp] = (tracker, tracker.to_commit())
            self.trackers[tp] = tracker
        return pins
