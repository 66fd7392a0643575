"""Key lanes: same key in order, one at a time; different keys (or none) concurrently."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

__all__ = ["KeyLanes"]

T = TypeVar("T")


class KeyLanes(Generic[T]):
    """Routes items to one lane per key and runs them on a small pool of worker tasks.

    A lane holds a key's items in arrival order; it is *ready* when it has items and none of
    them is running, and only then is it in the ready queue, so a key never runs twice at once.
    A keyless item is ready on its own. Workers take ready entries in turn and end when none
    is left.

    Workers are started on demand, up to ``workers`` (the caller's ``concurrency``) that are not
    `parked`: an item waiting for a retry backoff parks its worker and another one starts, so
    other keys flow meanwhile. A pool rather than a task per item: starting a task costs more
    than handling a message with a trivial handler (benchmarks/ measured it).

    The total number of queued items is bounded by the caller (``max_in_flight``), and how many
    handlers run at once by the caller's limiter (``concurrency``).
    """

    def __init__(
        self,
        task_group: TaskGroup,
        process: Callable[[T], Coroutine[object, object, None]],
        keep_going: Callable[[], bool],
        workers: int,
    ) -> None:
        self._tg = task_group
        self._process = process
        self._keep_going = keep_going
        self._limit = workers
        self._lanes: dict[str, deque[T]] = {}
        self._ready: deque[tuple[str | None, T | None]] = deque()
        """Keys whose lane is ready, as ``(key, None)``; keyless items as ``(None, item)``."""
        self._workers = 0
        self._parked = 0
        self._running: dict[T, anyio.CancelScope] = {}
        """Items being processed, with the cancel scope of the worker processing each."""

    def submit(self, key: str | None, item: T) -> None:
        if key is None:
            self._ready.append((None, item))
        else:
            lane = self._lanes.get(key)
            if lane is not None:
                lane.append(item)  # running or already ready: its worker gets to it in turn
                return
            self._lanes[key] = deque((item,))
            self._ready.append((key, None))
        self._start_worker_if_short()

    @contextlib.contextmanager
    def parked(self) -> Iterator[None]:
        """Around a wait that holds a worker but no concurrency slot (a retry backoff)."""
        self._parked += 1
        try:
            if self._ready:
                self._start_worker_if_short()
            yield
        finally:
            self._parked -= 1

    def _start_worker_if_short(self) -> None:
        if self._workers - self._parked < self._limit:
            self._workers += 1
            self._tg.start_soon(self._work)

    def is_running(self, item: T) -> bool:
        """A worker is processing ``item`` now (its handler, a retry wait, a dedup wait)."""
        return item in self._running

    def cancel(self, item: T) -> None:
        """Cancel the processing of ``item`` if it runs; its worker goes on with other items."""
        scope = self._running.get(item)
        if scope is not None:
            scope.cancel()

    async def _work(self) -> None:
        try:
            while self._keep_going():
                # One cancel scope per worker rather than per item: entering a scope costs
                # more than handling a trivial message (3.6 us, measured). `cancel` ends the
                # scope of the item it names; the worker then goes on under a fresh one.
                with anyio.CancelScope() as scope:
                    if not await self._run_items(scope):
                        return
        finally:
            # Items left behind when stopping (or cancelled) are still unsettled; the runner
            # releases them.
            self._workers -= 1

    async def _run_items(self, scope: anyio.CancelScope) -> bool:
        """Process ready items until none is left or the subscription stops (returns False);
        raises the cancellation when `cancel` ended the item it ran."""
        while self._keep_going():
            if not self._ready:
                # Let the fetcher refill before leaving: with fast handlers the queue empties
                # every few messages, and staying costs less than a new task.
                await anyio.lowlevel.checkpoint()
                if not self._ready:
                    return False
                continue
            key, item = self._ready.popleft()
            if key is not None:
                # The item stays at the head while it runs so that `submit` appends behind it
                # instead of making the key ready again.
                item = self._lanes[key][0]
            assert item is not None
            self._running[item] = scope
            try:
                await self._process(item)
            finally:
                del self._running[item]
                if key is not None:
                    self._next_of(key)
        return False

    def _next_of(self, key: str) -> None:
        lane = self._lanes[key]
        lane.popleft()
        if lane:
            self._ready.append((key, None))  # behind the keys that waited meanwhile
        else:
            del self._lanes[key]
