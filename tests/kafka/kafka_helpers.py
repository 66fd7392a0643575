"""Small helpers shared by the Kafka tests (imported as a plain module)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

import anyio

from eventbus.message import Message
from eventbus.transports.base import RawDelivery, Subscription, SubscriptionSpec, Transport

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


class RecordingOwner:
    """A `DeliveryOwner` that records what it is told was lost (and can be made slow)."""

    def __init__(self) -> None:
        self.lost_calls: list[list[RawDelivery]] = []
        self.lost_at: list[float] = []
        """`time.monotonic` of each call."""
        self.hold = 0.0
        """Seconds `lost` takes (a core waiting for a handler to give up)."""

    async def lost(self, deliveries: Sequence[RawDelivery]) -> None:
        self.lost_calls.append(list(deliveries))
        self.lost_at.append(time.monotonic())
        if self.hold:
            await asyncio.sleep(self.hold)


class Live:
    """A subscription run the way the core runs it: ``run`` started in a task group (hosted by
    a task of the test), its batches flattened into single deliveries."""

    def __init__(self, sub: Subscription, owner: RecordingOwner) -> None:
        self.sub = sub
        self.owner = owner
        self.batch_sizes: list[int] = []
        self._pending: deque[RawDelivery] = deque()
        self._batches: AsyncIterator[Sequence[RawDelivery]] | None = None
        self._host: asyncio.Task[None] | None = None

    async def start(self) -> None:
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def host() -> None:
            try:
                async with anyio.create_task_group() as tasks:
                    await tasks.start(self.sub.run)
                    started.set_result(None)
            except BaseExceptionGroup as group:  # what run raised, as the core would see it
                if len(group.exceptions) != 1:
                    raise
                raise group.exceptions[0] from None

        self._host = asyncio.create_task(host())
        await asyncio.wait({started, self._host}, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            await self._host  # raises what run raised before it was live

    @property
    def running(self) -> bool:
        return self._host is not None and not self._host.done()

    def __aiter__(self) -> Live:
        return self

    async def __anext__(self) -> RawDelivery:
        while not self._pending:
            if self._batches is None:
                self._batches = self.sub.__aiter__()
            try:
                batch = await anext(self._batches)
            except BaseException:
                self._batches = None  # a cancelled generator is finished: start a new one
                raise
            assert batch, "batches are never empty"
            self.batch_sizes.append(len(batch))
            self._pending.extend(batch)
        return self._pending.popleft()

    def pause(self) -> None:
        self.sub.pause()

    def resume(self) -> None:
        self.sub.resume()

    async def stop(self) -> None:
        await self.sub.stop()

    async def close(self) -> None:
        await self.sub.close()
        if self._host is not None:
            await self._host  # run returned (or raises what broke it)


async def subscribe(
    transport: Transport, spec: SubscriptionSpec, owner: RecordingOwner | None = None
) -> Live:
    """Subscribe and wait until live, as the core does (``await task_group.start(sub.run)``)."""
    owner = owner or RecordingOwner()
    live = Live(await transport.subscribe(spec, owner), owner)
    await live.start()
    return live


async def take(sub: Live, count: int, within: float = WAIT) -> list[RawDelivery]:
    """The next ``count`` deliveries, unsettled."""
    got: list[RawDelivery] = []
    async with asyncio.timeout(within):
        while len(got) < count:
            got.append(await anext(sub))
    return got


async def nothing_more(sub: Live, within: float = 3.0) -> list[RawDelivery]:
    """Whatever arrives within ``within`` seconds (for asserting that nothing does)."""
    got: list[RawDelivery] = []
    try:
        async with asyncio.timeout(within):
            while True:
                got.append(await anext(sub))
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

    def __init__(self, sub: Live, *, seed: int, max_delay: float = 0.02) -> None:
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
