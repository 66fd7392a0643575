"""Small helpers shared by the Kafka tests (imported as a plain module)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from eventbus.message import Message
from eventbus.transports.base import RawDelivery, Subscription

WAIT = 60.0
"""Upper bound for waits on the broker: generous, the machine is shared (not a speed check)."""


def group_of(topic: str, role: str = "g") -> str:
    """A consumer group name of this test only: Kafka groups span topics, and a member joining
    a group shared with another test would rebalance that test's consumers too."""
    return f"{topic}-{role}"


def messages(topic: str, count: int, *, key: Callable[[int], str | None] = str) -> list[Message]:
    return [
        Message(id=f"m{i}", topic=topic, body=str(i).encode(), key=key(i)) for i in range(count)
    ]


async def take(sub: Subscription, count: int, within: float = WAIT) -> list[RawDelivery]:
    """The next ``count`` deliveries, unsettled."""
    got: list[RawDelivery] = []
    iterator = sub.__aiter__()
    async with asyncio.timeout(within):
        while len(got) < count:
            got.append(await anext(iterator))
    return got


async def nothing_more(sub: Subscription, within: float = 3.0) -> list[RawDelivery]:
    """Whatever arrives within ``within`` seconds (for asserting that nothing does)."""
    got: list[RawDelivery] = []
    iterator = sub.__aiter__()
    try:
        async with asyncio.timeout(within):
            while True:
                got.append(await anext(iterator))
    except TimeoutError:
        pass
    return got


async def wait_until(predicate: Callable[[], bool], within: float = WAIT) -> None:
    """Poll ``predicate`` until true; fail (TimeoutError) after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)


class Worker:
    """Consumes a subscription roughly like the core does: every delivery is handled in its
    own task, after a random delay, then acked; so acks finish out of order."""

    def __init__(self, sub: Subscription, *, seed: int, max_delay: float = 0.02) -> None:
        self.sub = sub
        self.received: list[str] = []
        self._rng = random.Random(seed)
        self._max_delay = max_delay
        self._handling: set[asyncio.Task[None]] = set()
        self._runner = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for delivery in self.sub:
            self.received.append(delivery.message.id)
            task = asyncio.create_task(self._handle(delivery))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)

    async def _handle(self, delivery: RawDelivery) -> None:
        await asyncio.sleep(self._rng.random() * self._max_delay)
        await delivery.ack()

    async def close(self, *, finish: bool = True) -> None:
        """Stop; let in-flight handlers finish (or abandon them, unacked), then close."""
        await self.sub.stop()
        await self._runner
        if finish:
            await asyncio.gather(*self._handling)
        else:
            for task in list(self._handling):
                task.cancel()
            await asyncio.gather(*self._handling, return_exceptions=True)
        await self.sub.close()
