"""DESIGN 13: when the broker refuses a subscription's dead letter (or retry) for lack of
permissions, the subscription pauses, the bus reports not ready and the log names the
destination and the user; once the permission is granted it goes on, and nothing is lost."""

from __future__ import annotations

import asyncio
import logging
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from eventbus import EventBus, RetryPolicy
from eventbus.testing.conformance import wait_for

pytestmark = pytest.mark.amqp

LIMITED = ("^(limited|eventbus)\\..*", "^(limited\\..*|eventbus\\..*|amq\\.default)$")


async def _permit(extra: str = "") -> None:
    """Set the test user ``limited``'s permissions (scripts/brokers), plus ``extra`` names."""
    configure, write = LIMITED
    if extra:
        configure, write = f"({configure}|^{extra}$)", f"({write}|^{extra}$)"
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "set_permissions",
        "-p",
        "/",
        "limited",
        configure,
        write,
        LIMITED[0],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert await asyncio.wait_for(proc.wait(), 60) == 0


def _as_limited(amqp_url: str) -> str:
    parts = urlsplit(amqp_url)
    return urlunsplit(
        parts._replace(netloc=f"limited:limited-secret@{parts.hostname}:{parts.port}")
    )


async def test_a_refused_dead_letter_pauses_the_subscription_until_permitted(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    suffix = uuid.uuid4().hex[:8]
    queue, dlq = f"limited.refused-{suffix}", f"forbidden-dlq-{suffix}"
    bus = EventBus(_as_limited(amqp_url))
    attempts: list[int] = []

    # Two lane workers: the second could take message 2 if fetching were not paused.
    @bus.consume(queue, concurrency=2, retry=RetryPolicy(max_attempts=1), dead_letter=dlq)
    async def fail(n: int) -> None:
        attempts.append(n)
        raise ValueError("poison")

    caplog.set_level(logging.ERROR, logger="eventbus.dispatch")
    try:
        async with bus:
            assert bus.ready
            await bus.send(queue, 1)
            await wait_for(lambda: not bus.ready, what="not ready while refused")
            await bus.send(queue, 2)  # fetching is paused: not handled while refused
            await asyncio.sleep(1.0)
            assert attempts == [1] and not bus.ready
            assert bus.subscribers[0].stats.received == 1, "fetching paused"
            refusals = [
                r.getMessage() for r in caplog.records if "refuses publishes" in r.getMessage()
            ]
            assert refusals and dlq in refusals[0] and "as 'limited'" in refusals[0]
            await _permit(dlq)
            await wait_for(lambda: bus.ready, within=60, what="ready again once permitted")
            await wait_for(lambda: attempts == [1, 2], what="fetching again")
            await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 2, what="both")
        async with EventBus(amqp_url).publisher() as guest:
            assert await guest.transport.depth(dlq, "queue") == 2, "both dead letters kept"
    finally:
        await _permit()
