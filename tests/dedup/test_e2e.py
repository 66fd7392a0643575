"""End to end through the bus (DESIGN 3.6, issue 6): four consumers in one group, every message
published three times with the same id, one in five failing on its first attempt. The handler's
effect, counted in PostgreSQL, happens exactly once per message, with every shared store; with
the PostgreSQL inbox the failed attempts' writes are rolled back, not merely avoided.

Runs on every transport whose adapter is installed (memory always; Kafka and RabbitMQ with their
brokers); a transport whose adapter is not there yet is skipped with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from eventbus import Delivery, EventBus, RetryPolicy
from eventbus.dedup.base import DedupStore
from eventbus.dedup.memory import MemoryDedupStore
from eventbus.dedup.postgres import PostgresDedupStore
from eventbus.dedup.redis import RedisDedupStore
from eventbus.dedup.sqlite import SqliteDedupStore
from eventbus.transports.registry import transport_for_url

pytestmark = pytest.mark.postgres  # the effects are counted in PostgreSQL

MESSAGES = 60
COPIES = 3
CONSUMERS = 4
RETRY = RetryPolicy(max_attempts=5, initial_delay=0.01, max_delay=0.05)


def flaky(index: int) -> bool:
    return index % 5 == 0


async def wait_until(done: Callable[[], bool], patience: float = 120.0) -> None:
    with anyio.fail_after(patience):
        while True:
            if done():
                return
            await anyio.sleep(0.02)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("kafka", marks=pytest.mark.kafka),
        pytest.param("amqp", marks=pytest.mark.amqp),
    ]
)
def transport_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        url = f"memory://dedup-e2e-{uuid.uuid4().hex[:8]}"
    else:
        url = request.getfixturevalue(f"{request.param}_url")
    transport_for_url(url)  # an adapter missing from the install fails here, never skips
    return url


StoreFactory = Callable[[], DedupStore]


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres", "postgres-inbox"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds one store per consumer (as separate processes would), all on one backend."""
    if store_kind == "memory":
        shared = MemoryDedupStore()  # in-process only: the consumers share the instance
        return lambda: shared
    if store_kind == "sqlite":
        path = tmp_path / "dedup.sqlite3"
        return lambda: SqliteDedupStore(path)
    if store_kind == "redis":
        redis_url = request.getfixturevalue("redis_url")
        return lambda: RedisDedupStore(redis_url)
    postgres_url = request.getfixturevalue("postgres_url")
    return lambda: PostgresDedupStore(postgres_url, max_pool_size=4)


@pytest.fixture
async def effects_pool(postgres_url: str, effects_db: Any) -> AsyncIterator[Any]:
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def test_each_message_takes_effect_once(
    transport_url: str,
    store_kind: str,
    make_store: StoreFactory,
    effects_pool: Any,
    effects_table: str,
) -> None:
    topic = f"dedup-e2e-{uuid.uuid4().hex[:8]}"
    run = f"e2e-{store_kind}-{uuid.uuid4().hex[:8]}"  # the effects rows of this run
    insert = f"INSERT INTO {effects_table} (scope, key) VALUES ($1, $2)"
    index = {f"{run}-m{i}": i for i in range(MESSAGES)}
    consumers: list[EventBus] = []
    stores: list[DedupStore] = []

    for _ in range(CONSUMERS):
        store = make_store()
        stores.append(store)
        bus = EventBus(transport_url, dedup_store=store)
        consumers.append(bus)
        if store_kind == "postgres-inbox":

            @bus.subscribe(topic, group="billing", dedup=True, concurrency=4, retry=RETRY)
            async def bill_in_inbox(
                payload: dict[str, Any], delivery: Delivery, conn: asyncpg.Connection
            ) -> None:
                message_id = delivery.message.id
                await conn.execute(insert, run, message_id)
                if flaky(index[message_id]) and delivery.attempt == 1:
                    raise RuntimeError("flaky handler: rolled back, retried")

        else:

            @bus.subscribe(topic, group="billing", dedup=True, concurrency=4, retry=RETRY)
            async def bill(payload: dict[str, Any], delivery: Delivery) -> None:
                message_id = delivery.message.id
                if flaky(index[message_id]) and delivery.attempt == 1:
                    raise RuntimeError("flaky handler: fails before its effect, retried")
                await effects_pool.execute(insert, run, message_id)

    publisher = EventBus(transport_url)
    async with AsyncExitStack() as stack:
        for bus in consumers:
            await stack.enter_async_context(bus)
        await stack.enter_async_context(publisher)
        for copy in range(COPIES):
            for message_id, i in index.items():
                await publisher.publish(topic, {"i": i, "copy": copy}, message_id=message_id)

        stats = [s.stats for bus in consumers for s in bus.subscribers]
        await wait_until(lambda: sum(s.handled + s.duplicates for s in stats) >= MESSAGES * COPIES)
    for store in {id(s): s for s in stores}.values():
        await store.close()

    rows = await effects_pool.fetch(
        f"SELECT key, count(*) AS n FROM {effects_table} WHERE scope = $1 GROUP BY key", run
    )
    assert {r["key"]: r["n"] for r in rows} == dict.fromkeys(index, 1)
    assert sum(s.handled for s in stats) == MESSAGES
    assert sum(s.duplicates for s in stats) == MESSAGES * (COPIES - 1)
    assert sum(s.dead_lettered for s in stats) == 0
    # Each flaky message failed on the first attempt of each copy that claimed it first.
    flaky_messages = sum(map(flaky, index.values()))
    assert flaky_messages <= sum(s.failed_attempts for s in stats) <= flaky_messages * COPIES
    # The four consumers shared the work (on memory at least two of them got some).
    assert sum(1 for s in stats if s.handled + s.duplicates > 0) >= 2


@pytest.mark.parametrize("store_kind", ["sqlite", "redis", "postgres"])
async def test_duplicates_skipped_across_a_restart(
    store_kind: str, make_store: StoreFactory
) -> None:
    """A persistent store remembers what a previous run of the service processed."""
    url = f"memory://dedup-restart-{uuid.uuid4().hex[:8]}"
    topic = f"dedup-restart-{uuid.uuid4().hex[:8]}"
    handled: list[str] = []
    ids = [f"m{i}-{uuid.uuid4().hex[:6]}" for i in range(10)]

    async def run_service(publish: list[str]) -> int:
        store = make_store()
        bus = EventBus(url, dedup_store=store)

        @bus.subscribe(topic, group="g", dedup=True)
        async def handle(payload: dict[str, Any], delivery: Delivery) -> None:
            handled.append(delivery.message.id)

        async with bus:
            for message_id in publish:
                await bus.publish(topic, {}, message_id=message_id)
            stats = bus.subscribers[0].stats
            await wait_until(lambda: stats.handled + stats.duplicates >= len(publish))
        await store.close()
        return stats.duplicates

    assert await run_service(ids[:6]) == 0
    assert await run_service(ids) == 6  # the first six again, and four new ones
    assert sorted(handled) == sorted(ids)
