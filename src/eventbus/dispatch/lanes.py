"""Key lanes: same key in order, one at a time; different keys (or none) concurrently."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from typing import Generic, TypeVar

from anyio.abc import TaskGroup

__all__ = ["KeyLanes"]

T = TypeVar("T")


class KeyLanes(Generic[T]):
    """Routes items to one lane per key; each lane is a task that handles its items in arrival
    order and ends when its queue is empty. Keyless items each get a task of their own.

    The total number of queued items is bounded by the caller (``max_in_flight``), and how many
    handlers run at once by the caller's limiter (``concurrency``): a lane waiting for a retry
    backoff holds no concurrency slot, so other keys flow meanwhile.
    """

    def __init__(
        self,
        task_group: TaskGroup,
        process: Callable[[T], Coroutine[object, object, None]],
        keep_going: Callable[[], bool],
    ) -> None:
        self._tg = task_group
        self._process = process
        self._keep_going = keep_going
        self._lanes: dict[str, deque[T]] = {}

    def submit(self, key: str | None, item: T) -> None:
        if key is None:
            self._tg.start_soon(self._process, item)
            return
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(item)
            return
        self._lanes[key] = deque((item,))
        self._tg.start_soon(self._run_lane, key)

    async def _run_lane(self, key: str) -> None:
        lane = self._lanes[key]
        try:
            while lane and self._keep_going():
                # The item stays at the head while it runs so the lane is not reopened (and a
                # later message of this key started) before it finishes.
                await self._process(lane[0])
                lane.popleft()
        finally:
            # Items left behind when stopping are still unsettled; the runner releases them.
            del self._lanes[key]

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())
