"""`Slots`: the ``concurrency`` limit of one subscription."""

from __future__ import annotations

from collections import deque

import anyio

__all__ = ["Slots"]


class Slots:
    """A counting limit with first-come first-served waiters.

    `anyio.CapacityLimiter` does the same plus per-task borrower bookkeeping, which costs more
    than the rest of handling a message with a trivial handler; this runs twice per message.
    """

    __slots__ = ("_total", "_used", "_waiters")

    def __init__(self, total: int) -> None:
        self._total = total
        self._used = 0
        self._waiters: deque[anyio.Event] = deque()

    @property
    def used(self) -> int:
        return self._used

    async def acquire(self) -> None:
        """Take a slot; no trip through the event loop when one is free (the caller's next
        await is the checkpoint)."""
        if self._used < self._total and not self._waiters:
            self._used += 1
            return
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self.release()  # handed a slot while being cancelled: pass it on
            else:
                self._waiters.remove(event)
            raise

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # the slot goes straight to the next waiter
        else:
            self._used -= 1
