"""The read-ahead buffer between the fetch loop and the subscription's iterator.

Records aiokafka has fetched wait here, in fetch order, until the iterator hands them out; they
are tracked (unfinished) from the moment they enter, so no commit passes them. The buffer is
bounded in records and (roughly) in bytes of values. The fetch loop refills it only once it is
down to half: taking records from aiokafka in batches, rather than a few at a time, makes each
``getmany`` worth its cost (benchmarks/ measured it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from eventbus_kafka.delivery import Taken
from eventbus_kafka.offsets import PartitionOffsets

__all__ = ["ReadAhead"]

READ_AHEAD_RECORDS = 256
READ_AHEAD_BYTES = 4 * 1024 * 1024


class ReadAhead:
    def __init__(self, prefetch: int) -> None:
        self._records: deque[Taken] = deque()
        self._bytes = 0
        self.capacity = max(prefetch, READ_AHEAD_RECORDS)
        """A whole ``prefetch`` always fits, so one batch can fill the core's room."""
        self._low_water = self.capacity // 2
        self.taken_out = 0
        """Records taken out so far: progress, for the fetch loop's "stuck handlers" check."""
        self.ready = asyncio.Event()
        """Set when records arrive (or the iterator must wake up for another reason)."""
        self.room = asyncio.Event()
        """Set when the buffer went down to low water (or records were dropped)."""

    def __len__(self) -> int:
        return len(self._records)

    def free(self) -> int:
        """Records the fetch loop may add now: none until the buffer is down to low water."""
        if self._bytes >= READ_AHEAD_BYTES or len(self._records) > self._low_water:
            return 0
        return self.capacity - len(self._records)

    def push(self, taken: Taken) -> None:
        self._records.append(taken)
        self._bytes += taken.size
        self.ready.set()

    def extend(self, taken: list[Taken]) -> None:
        """`push` of several records, in order."""
        self._records.extend(taken)
        self._bytes += sum([t.size for t in taken])
        self.ready.set()

    def push_front(self, taken: Taken) -> None:
        """A released record goes out again before anything fetched after it."""
        self._records.appendleft(taken)
        self._bytes += taken.size
        self.ready.set()

    def take(self, most: int, current: Callable[[PartitionOffsets], bool]) -> list[Taken]:
        """Up to ``most`` records in fetch order, skipping (dropping) those whose tracker is
        no longer ``current``: their partition's new owner reads them from the commit."""
        records = self._records
        out: list[Taken] = []
        while records and len(out) < most:
            count = min(most - len(out), len(records))
            popleft = records.popleft
            chunk = [popleft() for _ in range(count)]
            self._bytes -= sum([t.size for t in chunk])
            # `current` once per tracker, not per record: a chunk spans a few partitions.
            trackers = {t.tracker for t in chunk}
            stale = {t for t in trackers if not current(t)}
            out += [t for t in chunk if t.tracker not in stale] if stale else chunk
        self.taken_out += len(out)
        if len(records) <= self._low_water:
            self.room.set()
        return out

    def drop(self, current: Callable[[PartitionOffsets], bool]) -> None:
        """Forget buffered records whose tracker is no longer ``current`` (revoked)."""
        kept = deque(t for t in self._records if current(t.tracker))
        if len(kept) != len(self._records):
            self._records = kept
            self._bytes = sum(t.size for t in kept)
            self.room.set()

    def clear(self) -> None:
        self._records.clear()
        self._bytes = 0
