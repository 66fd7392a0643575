"""Helpers for testing a transport on its own, below the dispatch core (SPI v2).

``async with open_subscription(transport, spec) as opened:`` subscribes with a `RecordingOwner`,
runs the subscription's background work in a task group, and hands out its deliveries one at
a time (`Opened.take`), flattening the batches the transport yields.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio

from eventbus.transports.base import RawDelivery, Subscription, SubscriptionSpec, Transport

__all__ = ["Opened", "RecordingOwner", "open_subscription"]


class RecordingOwner:
    """A `DeliveryOwner` that records what the transport reported lost."""

    def __init__(self) -> None:
        self.lost_batches: list[list[RawDelivery]] = []

    @property
    def lost_deliveries(self) -> list[RawDelivery]:
        return [d for batch in self.lost_batches for d in batch]

    async def lost(self, deliveries: Sequence[RawDelivery]) -> None:
        self.lost_batches.append(list(deliveries))


class Opened:
    """A live subscription, its owner, and its deliveries one at a time."""

    def __init__(self, sub: Subscription, owner: RecordingOwner) -> None:
        self.sub = sub
        self.owner = owner
        self.batches: list[int] = []
        """Size of every batch yielded so far."""
        self._iterator = sub.__aiter__()
        self._pending: deque[RawDelivery] = deque()

    async def next(self) -> RawDelivery:
        if not self._pending:
            batch = await self._iterator.__anext__()
            assert batch, "a transport must never yield an empty batch"
            self.batches.append(len(batch))
            self._pending.extend(batch)
        return self._pending.popleft()

    async def take(self, n: int) -> list[RawDelivery]:
        """The next ``n`` deliveries; fails after 30 s."""
        got: list[RawDelivery] = []
        with anyio.fail_after(30):
            while len(got) < n:
                got.append(await self.next())
        return got


@asynccontextmanager
async def open_subscription(
    transport: Transport, spec: SubscriptionSpec, owner: RecordingOwner | None = None
) -> AsyncIterator[Opened]:
    owner = owner or RecordingOwner()
    sub = await transport.subscribe(spec, owner)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(sub.run)
            yield Opened(sub, owner)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await sub.close()
