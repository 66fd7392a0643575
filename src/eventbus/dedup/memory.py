"""A bounded, in-process dedup store: for tests and single-process services."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from eventbus.dedup.base import ClaimResult

__all__ = ["MemoryDedupStore"]


class MemoryDedupStore:
    """Remembers up to ``max_entries`` keys (oldest evicted first) within one process.

    Not shared between processes: with several workers use a SQLite, Redis or PostgreSQL store.
    """

    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        # (scope, key) -> (owner or None when done, expires at)
        self._entries: OrderedDict[tuple[str, str], tuple[str | None, float]] = OrderedDict()

    async def claim(self, scope: str, key: str, *, owner: str, lease: float) -> ClaimResult:
        now = self._clock()
        entry = self._entries.get((scope, key))
        if entry is not None and entry[1] > now:
            if entry[0] is None:
                return ClaimResult.DONE
            if entry[0] != owner:
                return ClaimResult.BUSY
            # The owner's own claim again (e.g. retried after a lost reply): renew the lease.
        self._put((scope, key), owner, now + lease)
        return ClaimResult.CLAIMED

    async def complete(self, scope: str, key: str, *, owner: str, ttl: float) -> None:
        self._put((scope, key), None, self._clock() + ttl)

    async def release(self, scope: str, key: str, *, owner: str) -> None:
        entry = self._entries.get((scope, key))
        if entry is not None and entry[0] == owner:
            del self._entries[(scope, key)]

    async def close(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _put(self, k: tuple[str, str], owner: str | None, expires: float) -> None:
        self._entries[k] = (owner, expires)
        self._entries.move_to_end(k)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
