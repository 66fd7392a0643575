"""RedisDedupStore against a real Redis: the conformance suite, key layout, ownership, config."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from eventbus.dedup.base import ClaimResult
from eventbus.dedup.redis import RedisDedupStore
from eventbus.errors import BrokerUnavailableError
from eventbus.testing.dedup_conformance import DedupStoreConformance

pytestmark = pytest.mark.redis


class TestRedisDedupStore(DedupStoreConformance):
    @pytest.fixture
    async def store(self, redis_url: str) -> AsyncIterator[RedisDedupStore]:
        store = RedisDedupStore(redis_url)
        yield store
        await store.close()

    @pytest.fixture
    async def other_store(self, redis_url: str) -> AsyncIterator[RedisDedupStore]:
        store = RedisDedupStore(redis_url)
        yield store
        await store.close()


async def test_key_layout_and_expiry(redis_url: str) -> None:
    client = redis.asyncio.from_url(redis_url, decode_responses=True)
    store = RedisDedupStore(client)  # a client with decode_responses works too
    scope = f"orders/billing-{uuid.uuid4().hex[:8]}"
    try:
        assert await store.claim(scope, "m1", owner="w1", lease=30) is ClaimResult.CLAIMED
        key = f"eventbus:dedup:{scope}:m1"
        assert store.key_for(scope, "m1") == key
        assert await client.get(key) == "c:w1"
        assert 0 < await client.pttl(key) <= 30_000
        await store.complete(scope, "m1", owner="w1", ttl=3600)
        assert await client.get(key) == "d:w1"
        assert 30_000 < await client.pttl(key) <= 3_600_000
        # Colons in the scope are escaped so that ("a:b", "c") and ("a", "b:c") differ.
        assert store.key_for("a:b", "c") != store.key_for("a", "b:c")
    finally:
        await client.delete(store.key_for(scope, "m1"))
        await store.close()
        # The store did not close a client it was given.
        assert await client.ping()
        await client.aclose()


async def test_prefix(redis_url: str) -> None:
    store = RedisDedupStore(redis_url, prefix="svc-a:dedup")
    scope = f"t/{uuid.uuid4().hex[:8]}"
    try:
        await store.complete(scope, "m1", owner="w", ttl=30)
        client = redis.asyncio.from_url(redis_url)
        assert await client.exists(f"svc-a:dedup:{scope}:m1") == 1
        await client.aclose()
    finally:
        await store.close()


async def test_lazy_connection_and_reopen(redis_url: str) -> None:
    store = RedisDedupStore(redis_url)  # no I/O yet
    await store.open()
    await store.close()
    scope = f"t/{uuid.uuid4().hex[:8]}"
    assert await store.claim(scope, "m1", owner="w", lease=30) is ClaimResult.CLAIMED
    await store.close()


async def test_unreachable_server_raises() -> None:
    store = RedisDedupStore("redis://user:secret@127.0.0.1:1/0")
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1:1") as caught:
        await store.claim("t/g", "m1", owner="w", lease=1)
    assert "secret" not in str(caught.value)
    assert isinstance(caught.value, ConnectionError)
    await store.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("http://localhost",), {}, "redis://"),
        ((42,), {}, "Redis client"),
        (("redis://localhost",), {"prefix": ""}, "prefix"),
    ],
)
def test_bad_arguments(args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisDedupStore(*args, **kwargs)  # type: ignore[arg-type]
