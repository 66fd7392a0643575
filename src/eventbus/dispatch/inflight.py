"""In-flight accounting: what was fetched and not settled, and what a drain waits for.

``max_in_flight`` (DESIGN 3.7) bounds the deliveries fetched and not settled, whatever state
they are in: queued in a key lane, running, waiting for a retry, or handed to user code for a
manual ack. The fetcher waits for room before it pulls more, so memory stays bounded with any
backlog.

*Busy* deliveries are those a graceful drain must wait for (DESIGN 3.8): a handler started on
them and has not finished, or a manual-ack handler returned and the delivery is not settled.
Deliveries that are only queued are not busy: a drain leaves them, and they are released.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio

__all__ = ["InFlight"]

T = TypeVar("T")


class InFlight(Generic[T]):
    """Unsettled items by their delivery, in fetch order, and the busy subset of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._unsettled: dict[object, T] = {}
        """A dict as an ordered set: releasing at stop needs the fetch order."""
        self._busy: set[T] = set()
        self._room: anyio.Event | None = None
        self._quiet: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._unsettled)

    def get(self, delivery: object) -> T | None:
        return self._unsettled.get(delivery)

    def items(self) -> list[T]:
        """The unsettled items, oldest first."""
        return list(self._unsettled.values())

    # -- room --------------------------------------------------------------------------------

    async def wait_for_room(self) -> None:
        """Return once fewer than ``limit`` are unsettled, or `wake` was called. A counter and
        an event rather than a semaphore: this runs once per fetch."""
        while len(self._unsettled) >= self.limit:
            self._room = anyio.Event()
            await self._room.wait()
            if self._room is None:
                return  # woken by `wake`

    def wake(self) -> None:
        """Let a fetcher waiting for room look up (it is stopping)."""
        room, self._room = self._room, None
        if room is not None:
            room.set()

    def add(self, delivery: object, item: T) -> None:
        self._unsettled[delivery] = item

    def forget(self, delivery: object) -> None:
        """Settled (or no longer ours): frees its room; it is not busy any more either."""
        item = self._unsettled.pop(delivery, None)
        if item is None:
            return
        if self._room is not None:
            self._room.set()
            self._room = None
        self.leave_busy(item)

    # -- busy --------------------------------------------------------------------------------

    def enter_busy(self, item: T) -> None:
        self._busy.add(item)

    def leave_busy(self, item: T) -> None:
        self._busy.discard(item)
        if self._quiet is not None and not self._busy:
            self._quiet.set()

    async def wait_quiet(self) -> None:
        """Return once nothing is busy (new work must not start meanwhile: the caller stops
        starting handlers before it waits)."""
        if self._busy:
            self._quiet = anyio.Event()
            await self._quiet.wait()
