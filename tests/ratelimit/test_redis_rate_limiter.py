"""RedisRateLimiter against a real Redis: turns, the key and its expiry, sharing between
clients, an unreachable server, and two buses in one process sharing a limit."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio

from eventbus import EventBus, RateLimit, RedisRateLimiter
from eventbus.errors import BrokerUnavailableError

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> str:
    return f"eventbus-test:ratelimit:{uuid.uuid4().hex}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_burst_then_one_turn_per_interval(
    redis_url: str, prefix: str, client: redis.asyncio.Redis
) -> None:
    limiter = RedisRateLimiter(redis_url, prefix=prefix)
    try:
        waits = [await limiter.reserve("orders/billing", 10.0, 3) for _ in range(6)]
    finally:
        await limiter.close()
    assert waits[:3] == [0.0, 0.0, 0.0]
    # Later turns are spaced by 0.1s from the server's clock (the calls themselves take time).
    for turn, wait in enumerate(waits[3:], start=1):
        assert 0.1 * turn - 0.05 <= wait <= 0.1 * turn + 1e-6, waits
    key = limiter.key_for("orders/billing")
    assert key == f"{prefix}:orders/billing"
    ttl = await client.pttl(key)
    assert 0 < ttl <= 1000 + 700, "the key expires shortly after its last reservation"


async def test_two_clients_share_one_limit(redis_url: str, prefix: str) -> None:
    one = RedisRateLimiter(redis_url, prefix=prefix, key="api")
    two = RedisRateLimiter(redis_url, prefix=prefix, key="api")
    try:
        waits = []
        for _ in range(4):
            waits.append(await one.reserve("a", 5.0, 1))
            waits.append(await two.reserve("b", 5.0, 1))  # another scope, the same key
    finally:
        await one.close()
        await two.close()
    assert waits[0] == 0.0
    assert max(waits) >= 7 * 0.2 - 0.1, f"eight turns at 5/s span 1.4s: {waits}"


async def test_an_unreachable_server_is_broker_unavailable_without_the_password() -> None:
    limiter = RedisRateLimiter("redis://user:s3cret@127.0.0.1:1/0")
    with pytest.raises(BrokerUnavailableError) as caught:
        await limiter.reserve("q", 1.0, 1)
    assert "s3cret" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)
    await limiter.close()


async def test_two_buses_share_a_limit(redis_url: str, prefix: str) -> None:
    url = f"memory://rl-redis-{uuid.uuid4().hex}"
    limit = RateLimit(20.0, 2, shared=RedisRateLimiter(redis_url, prefix=prefix))
    starts: list[float] = []
    all_started = anyio.Event()
    buses = [EventBus(url), EventBus(url)]
    for bus in buses:

        @bus.subscribe("jobs", group="workers", concurrency=4, rate_limit=limit)
        async def handle(job: dict[str, int]) -> None:
            starts.append(time.monotonic())
            if len(starts) == 30:
                all_started.set()

    async with buses[0], buses[1]:
        await buses[0].publish_many("jobs", [{"n": i} for i in range(30)])
        with anyio.fail_after(20):
            await all_started.wait()
    took = sorted(starts)[-1] - sorted(starts)[0]
    assert took >= (30 - 2) / 20.0 - 0.05, f"30 starts took {took:.3f}s"
    assert sum(b.subscribers[0].stats.handled for b in buses) == 30
