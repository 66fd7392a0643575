"""A rate limit on Kafka (DESIGN 11): long waits pause the partitions (the consumer keeps
polling, so the group does not drop it) and resume them; nothing is redelivered or committed
out of order."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import anyio
import pytest

from eventbus import EventBus, RateLimit

pytestmark = pytest.mark.kafka


async def test_long_waits_pause_and_resume_a_kafka_subscription(
    kafka_url: str, name: Callable[[str], str]
) -> None:
    topic, group = name("rate-limit"), name("g")
    bus = EventBus(kafka_url)
    starts: list[float] = []
    seen: list[int] = []
    done = anyio.Event()

    @bus.subscribe(topic, group=group, rate_limit=RateLimit(per_second=1 / 1.2, burst=1))
    async def handle(job: dict[str, int]) -> None:
        starts.append(time.monotonic())
        seen.append(job["n"])
        if len(seen) == 4:
            done.set()

    async with bus:
        [runner] = bus._runners
        paused: list[bool] = []

        async def watch() -> None:
            while not done.is_set():
                paused.append(bool(runner._consume._paused_by))
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for n in range(4):
                await bus.publish(topic, {"n": n}, key="k")
            with anyio.fail_after(30):
                await done.wait()
        await anyio.sleep(0.1)
        assert any(paused), "fetching paused during the long waits"
        assert not runner._consume._paused_by, "and resumed once none was left"
    assert seen == [0, 1, 2, 3]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 1.2 - 0.01 for gap in gaps), gaps
    stats = bus.subscribers[0].stats
    assert stats.handled == 4 and stats.redelivered == 0 and stats.lost == 0
