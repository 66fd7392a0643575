"""Batch lanes: gather deliveries into batches; a key is never in two running batches.

The batch counterpart of `lanes.py` (``batch=``, DESIGN 11). Deliveries wait in arrival order;
a batch is formed once ``max_size`` of them are there or ``max_wait`` seconds after the oldest
arrived, and up to ``concurrency`` batches run at once. Messages of one key may share a batch,
in order; while a batch with key K runs, later deliveries of K wait aside (``blocked``) and go
back to the front when it ends, behind whatever of K that batch left unsettled. So per-key
order holds with several batches in flight.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from eventbus.batch import Batch

__all__ = ["BatchLanes"]

T = TypeVar("T")


class BatchLanes(Generic[T]):
    def __init__(
        self,
        task_group: TaskGroup,
        process: Callable[[list[T]], Coroutine[object, object, None]],
        keep_going: Callable[[], bool],
        key_of: Callable[[T], str | None],
        done: Callable[[T], bool],
        batch: Batch,
        concurrency: int,
    ) -> None:
        self._tg = task_group
        self._process = process
        self._keep_going = keep_going
        self._key_of = key_of
        self._done = done
        self._max_size = batch.max_size
        self._max_wait = batch.max_wait
        self._limit = concurrency
        self._waiting: deque[T] = deque()
        self._since = 0.0
        """When the oldest of ``_waiting`` arrived (loop time)."""
        self._blocked: dict[str, deque[T]] = {}
        """Deliveries whose key is in a running batch, per key, in arrival order."""
        self._busy: set[str] = set()
        self._running: dict[T, anyio.CancelScope] = {}
        self._batches = 0
        self._wake = anyio.Event()

    def start(self) -> None:
        self._tg.start_soon(self._form)

    def submit(self, key: str | None, item: T) -> None:
        if key is not None and (key in self._busy or key in self._blocked):
            self._blocked.setdefault(key, deque()).append(item)
            return
        if not self._waiting:
            self._since = anyio.current_time()
            self._waiting.append(item)
            self._wake.set()
        else:
            self._waiting.append(item)
            if len(self._waiting) == self._max_size:
                self._wake.set()

    def is_running(self, item: T) -> bool:
        return item in self._running

    def returned(self, items: list[T]) -> None:
        """The handler returned for ``items``: from now on their batch only settles them, and
        losing one of them no longer cancels it (the others' acks must not be cut short, or
        they would be handled again)."""
        for item in items:
            self._running.pop(item, None)

    def cancel(self, item: T) -> None:
        """Cancel the batch ``item`` runs in; what it leaves unsettled goes back to the front."""
        scope = self._running.get(item)
        if scope is not None:
            scope.cancel()

    async def _form(self) -> None:
        while self._keep_going():
            waiting = len(self._waiting)
            deadline = math.inf
            if waiting and self._batches < self._limit:
                deadline = self._since + self._max_wait
                if waiting >= self._max_size or anyio.current_time() >= deadline:
                    self._start_batch()
                    continue
            self._wake = anyio.Event()
            with anyio.move_on_after(deadline - anyio.current_time()):
                await self._wake.wait()

    def _start_batch(self) -> None:
        batch: list[T] = []
        keys: set[str] = set()
        while self._waiting and len(batch) < self._max_size:
            item = self._waiting.popleft()
            key = self._key_of(item)
            if key is not None and key in self._busy:
                # Came back from a batch that ended while its key ran in another one.
                self._blocked.setdefault(key, deque()).append(item)
                continue
            if key is not None:
                keys.add(key)
            batch.append(item)
        # What is left waited since `_since` already: it goes when a batch slot is free
        # (`submit` sets `_since` anew once the queue was empty).
        if not batch:
            return
        if keys and self._waiting:
            # What is left of the batch's keys waits aside from now on, ahead of what arrives
            # for them while the batch runs (`submit` puts that aside too).
            rest: deque[T] = deque()
            for item in self._waiting:
                key = self._key_of(item)
                if key in keys:
                    self._blocked.setdefault(key, deque()).append(item)
                else:
                    rest.append(item)
            self._waiting = rest
        self._busy |= keys
        self._batches += 1
        self._tg.start_soon(self._run, batch, keys)

    async def _run(self, batch: list[T], keys: set[str]) -> None:
        try:
            with anyio.CancelScope() as scope:
                for item in batch:
                    self._running[item] = scope
                await self._process(batch)
        finally:
            for item in batch:
                self._running.pop(item, None)
            self._batches -= 1
            self._busy -= keys
            # What the batch left unsettled (its deliveries were lost mid-batch, say) and what
            # waited for its keys go first, in the order they came.
            again = [item for item in batch if not self._done(item)]
            for key in keys:
                again.extend(self._blocked.pop(key, ()))
            if again:
                self._waiting.extendleft(reversed(again))
                self._since = min(self._since, anyio.current_time())
            self._wake.set()
