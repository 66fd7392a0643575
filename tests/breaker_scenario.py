"""The circuit breaker's acceptance scenario (DESIGN 11), shared by the Kafka and RabbitMQ tests
(imported by module name: tests are no package).

A simulated outage: the handler's dependency is down for ``OUTAGE`` seconds from the start,
then recovers; ``TOTAL`` messages are published while it is down. The same subscription runs
twice at once, on two topics: with a breaker nothing is dead-lettered and every message is
handled; without one (same retry policy) the outage fills the dead-letter queue.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import anyio

from eventbus import CircuitBreaker, EventBus, Message, RetryPolicy
from eventbus.testing.conformance import wait_for

OUTAGE = 10.0
TOTAL = 200
RETRY = RetryPolicy(max_attempts=3, initial_delay=0.1)
# min_calls at most max_attempts: no message can run out of attempts before the breaker trips.
BREAKER = CircuitBreaker(failure_ratio=0.5, min_calls=3, window=10.0, open_for=1.0)


@dataclass
class Run:
    handled: set[str] = field(default_factory=set)
    successes: int = 0
    calls: int = 0
    dead_lettered: int = 0
    opened: int = 0
    state: str | None = None


async def outage_run(url: str, prefix: str, breaker: CircuitBreaker | None) -> Run:
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    bus = EventBus(url, graceful_timeout=5)
    run = Run()
    down_until = time.monotonic() + 3600.0

    @bus.subscribe(topic, group="g", concurrency=8, retry=RETRY, breaker=breaker)
    async def handle(message: Message) -> None:
        run.calls += 1
        if time.monotonic() < down_until:
            raise ConnectionError("the downstream service is unavailable")
        run.successes += 1
        run.handled.add(message.id)

    stats = bus.subscribers[0].stats
    async with bus:
        down_until = time.monotonic() + OUTAGE
        ids = await bus.publish_many(topic, [{"n": i} for i in range(TOTAL)])
        assert time.monotonic() < down_until, "published during the outage"
        await wait_for(
            lambda: len(run.handled) + stats.dead_lettered >= TOTAL,
            within=OUTAGE + 25,
            what=f"{TOTAL} messages handled or dead-lettered",
        )
        await anyio.sleep(0.5)  # let stragglers show up in the counts
    run.dead_lettered = stats.dead_lettered
    run.opened = stats.breaker_opened
    run.state = stats.breaker_state
    assert run.handled <= set(ids)
    return run


async def with_and_without(url: str, prefix: str) -> tuple[Run, Run]:
    """Both runs at once, so the whole test takes one outage."""
    runs: dict[bool, Run] = {}

    async def one(on: bool) -> None:
        name = f"{prefix}-{'on' if on else 'off'}"
        runs[on] = await outage_run(url, name, BREAKER if on else None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, True)
        tg.start_soon(one, False)
    return runs[True], runs[False]


def check(on: Run, off: Run) -> None:
    counts = (
        f"with the breaker: {on.dead_lettered} dead letters, {len(on.handled)} of {TOTAL} handled "
        f"({on.successes} successes, {on.calls} handler calls, opened {on.opened} times); "
        f"without: {off.dead_lettered} dead letters, {len(off.handled)} handled "
        f"({off.calls} handler calls)"
    )
    assert on.dead_lettered == 0, counts
    assert len(on.handled) == TOTAL, counts
    assert on.opened >= 1 and on.state == "closed", counts
    assert off.dead_lettered > 0, counts
    assert off.dead_lettered + len(off.handled) == TOTAL, counts
    # Shown with -rA (or on failure): the difference the breaker makes.
    print(counts)
