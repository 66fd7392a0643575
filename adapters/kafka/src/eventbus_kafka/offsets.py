"""Which offset of a partition may be committed, whatever order deliveries settle in.

Committing offset N tells Kafka that everything before N is done (PITFALLS: a later commit
silently skipped a failed message in a peer framework). So the committable offset of a partition
is its lowest unfinished offset, or, when nothing is unfinished, the highest finished one + 1.
A released record stays unfinished: the commit never passes it, so it is redelivered after a
restart or a rebalance.

Records finished *above* that offset would be redelivered too; to avoid it, each commit carries
them in its metadata string (``eb1:`` and ranges relative to the committed offset) and the next
owner of the partition skips them. That part is an optimisation: metadata that is missing,
truncated or unreadable only means more redeliveries, never a skipped record.

Pure bookkeeping, no I/O: the subscription calls it and commits.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable

__all__ = ["PartitionOffsets", "decode_done", "encode_done"]

_PREFIX = "eb1:"
METADATA_BUDGET = 3000
"""Characters of commit metadata at most (brokers refuse more than 4096 by default)."""
_SCAN_LIMIT = 4096
"""Pending offsets looked at when building metadata: bounds the work of one commit."""


def encode_done(base: int, done: Iterable[int], budget: int = METADATA_BUDGET) -> str:
    """Commit metadata listing finished offsets >= ``base`` (sorted input), as ranges of
    deltas. Ranges that do not fit in ``budget`` are left out (they are just redelivered)."""
    ranges: list[list[int]] = []
    for offset in done:
        if offset < base:
            continue
        delta = offset - base
        if ranges and delta == ranges[-1][1] + 1:
            ranges[-1][1] = delta
        else:
            ranges.append([delta, delta])
    if not ranges:
        return ""
    parts: list[str] = []
    size = len(_PREFIX)
    for first, last in ranges:
        part = str(first) if first == last else f"{first}-{last}"
        if size + len(part) + 1 > budget:
            break
        parts.append(part)
        size += len(part) + 1
    return _PREFIX + ",".join(parts) if parts else ""


def decode_done(base: int, metadata: str | None) -> set[int]:
    """The finished offsets a commit's metadata lists; empty when it is not ours or malformed."""
    if not metadata or not metadata.startswith(_PREFIX):
        return set()
    done: set[int] = set()
    try:
        for part in metadata[len(_PREFIX) :].split(","):
            first, _, last = part.partition("-")
            low, high = int(first), int(last or first)
            if low < 0 or high < low:
                return set()
            done.update(range(base + low, base + high + 1))
    except ValueError:
        return set()
    return done


class PartitionOffsets:
    """Offsets of one partition owned by one consumer for one assignment.

    Offsets are `track`-ed in increasing order (the order Kafka hands them out); they need not
    be contiguous (compaction and transaction markers leave gaps). After `revoke` nothing
    changes any more: late completions from the previous owner are ignored.
    """

    __slots__ = ("_done", "_next", "_pending", "_skip", "_unfinished", "committed", "revoked")

    def __init__(self, start: int, done_ahead: Iterable[int] = ()) -> None:
        self._pending: deque[int] = deque()
        """Tracked offsets in increasing order, down to the lowest unfinished one."""
        self._unfinished: set[int] = set()
        self._done: set[int] = set()
        """Finished offsets still queued behind an unfinished one."""
        self._next = start
        """Committable when nothing is pending: the position after everything finished."""
        self._skip = {offset for offset in done_ahead if offset >= start}
        """Offsets the previous owner finished above its committed offset (commit metadata)."""
        self.committed: tuple[int, str] | None = None
        """The last (offset, metadata) committed for this assignment (set by the committer)."""
        self.revoked = False

    def track(self, offset: int) -> bool:
        """A record was taken from the consumer; it is unfinished until `finish`.

        Returns False for an offset at or below one already tracked or finished: the consumer
        re-read it after an offset reset, and the bookkeeping already covers it."""
        if self.revoked:
            return False
        last = self._pending[-1] if self._pending else self._next - 1
        if offset <= last:
            return False
        self._pending.append(offset)
        self._unfinished.add(offset)
        return True

    def skip(self, offset: int) -> bool:
        """True when the previous owner already finished ``offset`` (its commit metadata says
        so): it is recorded as finished here and must not be delivered again."""
        if offset not in self._skip:
            return False
        self._skip.discard(offset)
        if self.track(offset):
            self.finish(offset)
        return True

    def finish(self, offset: int) -> bool:
        """The record is done. Returns False when that changes nothing (unknown offset, second
        call, or the partition was revoked)."""
        unfinished = self._unfinished
        if self.revoked or offset not in unfinished:
            return False
        unfinished.discard(offset)
        pending = self._pending  # holds every unfinished offset, so it is not empty
        if pending[0] != offset:
            self._done.add(offset)  # out of order: it waits behind the lowest unfinished one
            return True
        # The common case: records finish in the order they were taken.
        pending.popleft()
        self._next = offset + 1
        done = self._done
        while done and pending and pending[0] in done:
            head = pending.popleft()
            done.discard(head)
            self._next = head + 1
        return True

    @property
    def skipping(self) -> bool:
        """Some offsets ahead are to be skipped (`skip`); False for nearly every partition."""
        return bool(self._skip)

    @property
    def committable(self) -> int:
        """The offset to commit: never past a record that is not finished."""
        return self._pending[0] if self._pending else self._next

    @property
    def unfinished(self) -> int:
        return len(self._unfinished)

    @property
    def window(self) -> int:
        """Offsets tracked from the lowest unfinished one on, finished or not: what one stuck
        record makes this bookkeeping hold (the fetch loop bounds it, `Fetcher.take`)."""
        return len(self._pending)

    def metadata(self) -> str:
        """The finished offsets above `committable`, for the commit's metadata."""
        base = self.committable
        done = [o for o in itertools.islice(self._pending, _SCAN_LIMIT) if o in self._done]
        if self._skip:
            self._skip = {o for o in self._skip if o >= base}
            done = sorted({*done, *self._skip})
        return encode_done(base, done)

    def to_commit(self) -> tuple[int, str]:
        return self.committable, self.metadata()

    def needs_commit(self) -> bool:
        return not self.revoked and self.to_commit() != self.committed

    def revoke(self) -> tuple[int, str]:
        """Freeze at the current (offset, metadata) and return it; settles after this are
        no-ops (the new owner will redeliver what was not finished)."""
        state = self.to_commit()
        self.revoked = True
        return state
