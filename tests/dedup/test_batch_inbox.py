"""A batch handler inside one PostgreSQL inbox transaction (``batch=`` with the inbox): its
writes and every item's "done" record commit together or not at all."""

import uuid
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import pytest

from eventbus import Batch, Delivery, EventBus, HandlerSignatureError, Message, RetryPolicy
from eventbus.dedup import MemoryDedupStore, PostgresDedupStore
from eventbus.testing.conformance import wait_for

pytestmark = pytest.mark.postgres

RETRY = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False)


async def test_a_failed_batch_rolls_back_and_its_retry_commits_once(
    postgres_url: str, effects: tuple[asyncpg.Pool, str]
) -> None:
    pool, table = effects
    store = PostgresDedupStore(postgres_url, table=f"dedup_{uuid.uuid4().hex[:8]}")
    bus = EventBus(f"memory://{uuid.uuid4().hex}", dedup_store=store)
    calls: list[list[str]] = []

    @bus.consume("jobs", batch=Batch(max_size=4, max_wait=5.0), dedup=True, retry=RETRY)
    async def store_all(messages: list[Message], conn: asyncpg.Connection) -> None:
        calls.append([m.id for m in messages])
        for message in messages:
            await conn.execute(f"INSERT INTO {table} VALUES ($1)", message.id)
        if len(calls) == 1:
            raise RuntimeError("after writing: the whole batch rolls back")

    async with bus:
        for i in range(4):
            await bus.send("jobs", {"n": i}, message_id=f"m{i}")
        await wait_for(lambda: bus.subscribers[0].stats.handled == 4, what="the retry")
        await bus.send("jobs", {"n": 0}, message_id="m0")  # done in the inbox: a duplicate
        await wait_for(lambda: bus.subscribers[0].stats.duplicates == 1, what="the duplicate")
    await store.close()
    assert calls == [["m0", "m1", "m2", "m3"]] * 2
    rows = await pool.fetch(f"SELECT id, count(*) AS n FROM {table} GROUP BY id ORDER BY id")
    assert [(r["id"], r["n"]) for r in rows] == [(f"m{i}", 1) for i in range(4)], "once each"


async def test_settling_an_item_inside_the_inbox_is_refused(
    postgres_url: str, effects: tuple[asyncpg.Pool, str]
) -> None:
    """A nack would settle before the transaction commits; it raises, so the batch fails and
    is retried (as for one message: raise Retry or Reject instead)."""
    pool, table = effects
    store = PostgresDedupStore(postgres_url, table=f"dedup_{uuid.uuid4().hex[:8]}")
    bus = EventBus(f"memory://{uuid.uuid4().hex}", dedup_store=store)
    attempts: list[int] = []

    @bus.consume("jobs", batch=Batch(max_size=2, max_wait=5.0), dedup=True, retry=RETRY)
    async def handle(
        deliveries: list[Delivery], messages: list[Message], conn: asyncpg.Connection
    ) -> None:
        attempts.append(deliveries[0].attempt)
        for message in messages:
            await conn.execute(f"INSERT INTO {table} VALUES ($1)", message.id)
        if deliveries[0].attempt == 1:
            await deliveries[0].nack()

    async with bus:
        await bus.send("jobs", {"n": 1}, message_id="a")
        await bus.send("jobs", {"n": 2}, message_id="b")
        await wait_for(lambda: bus.subscribers[0].stats.handled == 2, what="the retry")
    await store.close()
    assert attempts == [1, 2]
    assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 2, "the first rolled back"


class OneKeyInbox(MemoryDedupStore):
    """An inbox store with no way to record many keys in one transaction."""

    inbox_type = asyncpg.Connection

    def inbox(
        self, scope: str, key: str, *, owner: str, ttl: float
    ) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError


def test_a_store_without_inbox_many_is_refused_for_a_batch_inbox() -> None:
    bus = EventBus("memory://", dedup_store=OneKeyInbox())

    async def batch_inbox_handler(messages: list[Message], conn: asyncpg.Connection) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match=r"batch_inbox_handler.*inbox_many"):
        bus.consume("jobs", batch=Batch(10), dedup=True)(batch_inbox_handler)
