"""Settling from inside an inbox handler cannot mark a message done before its writes commit."""

import uuid

import asyncpg
import pytest

from eventbus import Delivery, EventBus, RetryPolicy
from eventbus.dedup import PostgresDedupStore
from eventbus.testing.conformance import wait_for

RETRY = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False)


@pytest.mark.parametrize("settle", ["ack", "nack"])
async def test_settling_inside_the_inbox_then_failing_loses_nothing(
    postgres_url: str, effects: tuple[asyncpg.Pool, str], settle: str
) -> None:
    pool, table = effects
    store = PostgresDedupStore(postgres_url, table=f"dedup_{uuid.uuid4().hex[:8]}")
    bus = EventBus(f"memory://{uuid.uuid4().hex}", dedup_store=store)
    topic = "inbox-settle"
    attempts: list[int] = []

    @bus.subscribe(topic, group="g", dedup=True, retry=RETRY)
    async def handle(payload: dict[str, int], delivery: Delivery, conn: asyncpg.Connection) -> None:
        attempts.append(delivery.attempt)
        await conn.execute(f"INSERT INTO {table} VALUES ($1)", delivery.message.id)
        if delivery.attempt == 1:
            if settle == "ack":
                await delivery.ack()  # deferred until the inbox commits
            else:
                await delivery.nack()  # refused inside the inbox: counts as a failure
            raise RuntimeError("fails after settling: the transaction rolls back")

    async with bus:
        await bus.publish(topic, {"n": 1}, message_id="m-1")
        await wait_for(lambda: bus.subscribers[0].stats.handled == 1, what="the retry")
        await bus.publish(topic, {"n": 1}, message_id="m-1")
        await wait_for(lambda: bus.subscribers[0].stats.duplicates == 1, what="the duplicate")
    await store.close()
    assert attempts == [1, 2]
    assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE id = 'm-1'") == 1
