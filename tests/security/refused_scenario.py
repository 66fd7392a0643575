"""DESIGN 13's refused dead letter, the same on every broker: shared by the refusal tests."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import pytest

from eventbus import EventBus, RetryPolicy
from eventbus.testing.conformance import wait_for


async def refused_until_granted(
    url: str, grant: Callable[[str], Awaitable[None]], caplog: pytest.LogCaptureFixture
) -> str:
    """As the test user ``limited`` (``url``), whose dead-letter destination the broker refuses
    until ``grant(name)``: the subscription pauses, the bus is not ready and the log names the
    destination and the user; once granted, both messages are dead-lettered and the bus is
    ready. Returns the dead-letter destination's name, for the caller to count what it holds."""
    suffix = uuid.uuid4().hex[:8]
    queue, dlq = f"limited.refused-{suffix}", f"forbidden-dlq-{suffix}"
    bus = EventBus(url)
    attempts: list[int] = []

    # Two lane workers: the second could take message 2 if fetching were not paused.
    @bus.consume(queue, concurrency=2, retry=RetryPolicy(max_attempts=1), dead_letter=dlq)
    async def fail(n: int) -> None:
        attempts.append(n)
        raise ValueError("poison")

    caplog.set_level(logging.ERROR, logger="eventbus.dispatch")
    async with bus:
        assert bus.ready
        await bus.send(queue, 1)
        await wait_for(lambda: not bus.ready, what="not ready while refused")
        await bus.send(queue, 2)  # fetching is paused: not handled while refused
        await asyncio.sleep(1.0)
        assert attempts == [1] and not bus.ready
        assert bus.subscribers[0].stats.received == 1, "fetching paused"
        refusals = [r.getMessage() for r in caplog.records if "refuses publishes" in r.getMessage()]
        assert refusals and dlq in refusals[0] and "'limited'" in refusals[0]
        assert "limited-secret" not in "".join(refusals)
        await grant(dlq)
        await wait_for(lambda: bus.ready, within=60, what="ready again once granted")
        await wait_for(lambda: attempts == [1, 2], what="fetching again")
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 2, what="both")
    return dlq
