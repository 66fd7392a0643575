"""Consumer-side deduplication (DESIGN 3.6) in the dispatcher, and the bounded in-memory store."""

import time
import uuid
from collections.abc import Callable

import anyio
import pydantic
import pytest

from eventbus import ClaimResult, ConfigurationError, EventBus, MemoryDedupStore, Message
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for


class Order(pydantic.BaseModel):
    id: int


async def test_busy_claim_waits_for_the_lease_then_runs_once(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    store = MemoryDedupStore()
    bus = make_bus()
    calls: list[float] = []

    @bus.subscribe("orders", group="g", dedup=store)
    async def handler(order: Order) -> None:
        calls.append(time.monotonic())

    lease = 0.6
    before_claim = time.monotonic()
    # Another worker holds the key (and then dies without completing or releasing it).
    assert await store.claim("orders/g", "m-1", owner="crashed-worker", lease=lease) is (
        ClaimResult.CLAIMED
    )
    async with bus:
        await bus.publish("orders", Order(id=1), message_id="m-1")
        await wait_for(lambda: len(calls) == 1, what="the handler once the lease ran out")
        await anyio.sleep(0.3)
    assert len(calls) == 1
    assert calls[0] >= before_claim + lease, "ran while another owner's lease was live"
    assert bus.subscribers[0].stats.duplicates == 0
    assert broker.ready("orders", "g") == []
    assert await store.claim("orders/g", "m-1", owner="x", lease=1) is ClaimResult.DONE


async def test_busy_claim_completed_elsewhere_is_skipped(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    store = MemoryDedupStore()
    bus = make_bus()
    calls: list[int] = []

    @bus.consume("jobs", dedup=store)
    async def handler(order: Order) -> None:
        calls.append(order.id)

    await store.claim("jobs", "m-1", owner="other-worker", lease=60)
    async with bus:
        await bus.send("jobs", Order(id=1), message_id="m-1")
        await wait_for(lambda: bus.subscribers[0].stats.received == 1)
        await anyio.sleep(0.3)
        assert calls == [], "waits while the other worker processes it"
        await store.complete("jobs", "m-1", owner="other-worker", ttl=60)
        await wait_for(lambda: bus.subscribers[0].stats.duplicates == 1)
    assert calls == []
    assert broker.ready("jobs") == [], "a duplicate is acked"


async def test_dedup_key_callable(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    calls: list[str] = []

    @bus.subscribe(
        "orders", group="g", dedup=True, dedup_key=lambda m: m.headers.get("order-ref", m.id)
    )
    async def handler(message: Message) -> None:
        calls.append(message.id)

    async with bus:
        await bus.publish("orders", b"1", message_id="a", headers={"order-ref": "R1"})
        await bus.publish("orders", b"1", message_id="b", headers={"order-ref": "R1"})
        await bus.publish("orders", b"2", message_id="c", headers={"order-ref": "R2"})
        await bus.publish("orders", b"3", message_id="d")
        await bus.publish("orders", b"3", message_id="d")
        await wait_for(lambda: sum(s.stats.received for s in bus.subscribers) == 5)
        await wait_for(lambda: bus.subscribers[0].stats.duplicates == 2)
    assert len(calls) == 3 and {"c", "d"} <= set(calls)
    assert len({"a", "b"} & set(calls)) == 1, "same dedup key: only one of a and b runs"


async def test_dedup_true_uses_the_bus_store(url: str) -> None:
    store = MemoryDedupStore()
    bus = EventBus(url, dedup_store=store)
    calls: list[int] = []

    @bus.consume("jobs", dedup=True)
    async def handler(order: Order) -> None:
        calls.append(order.id)

    assert bus.dedup_store is store
    assert bus.subscribers[0].options.dedup is store
    await store.complete("jobs", "already-done", owner="o", ttl=60)
    async with bus:
        await bus.send("jobs", Order(id=1), message_id="already-done")
        await bus.send("jobs", Order(id=2), message_id="new")
        await wait_for(lambda: calls == [2])
        await wait_for(lambda: bus.subscribers[0].stats.duplicates == 1)


def test_default_bus_store_is_bounded_memory(url: str) -> None:
    bus = EventBus(url)
    assert isinstance(bus.dedup_store, MemoryDedupStore)
    assert bus.dedup_store is bus.dedup_store


# -- MemoryDedupStore ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_store_evicts_the_oldest_beyond_max_entries() -> None:
    store = MemoryDedupStore(max_entries=2)
    for key in ("a", "b", "c"):
        assert await store.claim("s", key, owner="o", lease=60) is ClaimResult.CLAIMED
        await store.complete("s", key, owner="o", ttl=60)
    assert len(store) == 2
    assert await store.claim("s", "a", owner="o", lease=60) is ClaimResult.CLAIMED, "evicted"
    # Claiming "a" again made it the newest: "b" is the oldest now and goes next.
    assert len(store) == 2
    assert await store.claim("s", "c", owner="o", lease=60) is ClaimResult.DONE
    assert await store.claim("s", "b", owner="o", lease=60) is ClaimResult.CLAIMED


async def test_memory_store_ttl_and_lease_follow_its_clock() -> None:
    clock = FakeClock()
    store = MemoryDedupStore(clock=clock)
    await store.claim("s", "done", owner="o", lease=5)
    await store.complete("s", "done", owner="o", ttl=10)
    assert await store.claim("s", "busy", owner="o1", lease=5) is ClaimResult.CLAIMED

    clock.now += 4.99
    assert await store.claim("s", "done", owner="o2", lease=5) is ClaimResult.DONE
    assert await store.claim("s", "busy", owner="o2", lease=5) is ClaimResult.BUSY
    clock.now += 0.01  # the lease ran out
    assert await store.claim("s", "busy", owner="o2", lease=5) is ClaimResult.CLAIMED
    assert await store.claim("s", "busy", owner="o3", lease=5) is ClaimResult.BUSY
    clock.now += 4.99
    assert await store.claim("s", "done", owner="o2", lease=5) is ClaimResult.DONE
    clock.now += 0.01  # the ttl ran out: forgotten
    assert await store.claim("s", "done", owner="o2", lease=5) is ClaimResult.CLAIMED


async def test_memory_store_scopes_and_release() -> None:
    store = MemoryDedupStore()
    await store.claim("orders/a", "k", owner="o1", lease=60)
    assert await store.claim("orders/b", "k", owner="o2", lease=60) is ClaimResult.CLAIMED
    await store.release("orders/a", "k", owner="not-the-owner")
    assert await store.claim("orders/a", "k", owner="o3", lease=60) is ClaimResult.BUSY
    await store.release("orders/a", "k", owner="o1")
    assert await store.claim("orders/a", "k", owner="o3", lease=60) is ClaimResult.CLAIMED
    await store.close()
    assert len(store) == 0


def test_memory_store_needs_room() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryDedupStore(max_entries=0)


class _FlakyStore(MemoryDedupStore):
    """Fails its first calls of each kind, as a store does while its server restarts."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = {"claim": failures, "complete": failures}

    def _maybe_fail(self, what: str) -> None:
        if self.failures[what] > 0:
            self.failures[what] -= 1
            raise ConnectionError(f"store down ({what})")

    async def claim(self, scope: str, key: str, *, owner: str, lease: float) -> ClaimResult:
        self._maybe_fail("claim")
        return await super().claim(scope, key, owner=owner, lease=lease)

    async def complete(self, scope: str, key: str, *, owner: str, ttl: float) -> None:
        self._maybe_fail("complete")
        await super().complete(scope, key, owner=owner, ttl=ttl)


async def test_store_outage_delays_but_neither_strands_nor_duplicates() -> None:
    store = _FlakyStore(failures=2)
    bus = EventBus(f"memory://{uuid.uuid4().hex}", dedup_store=store)
    handled: list[str] = []

    @bus.subscribe("t", group="g", dedup=True)
    async def handle(message: Message) -> None:
        handled.append(message.id)

    async with bus:
        await bus.publish("t", b"x", message_id="a")
        await wait_for(lambda: bus.subscribers[0].stats.handled == 1, what="handled despite outage")
        await wait_for(lambda: store.failures["complete"] == 0, what="complete retried")
        await bus.publish("t", b"x", message_id="a")
        await wait_for(lambda: bus.subscribers[0].stats.duplicates == 1, what="duplicate skipped")
    assert handled == ["a"]


async def test_dedup_lease_bounds_how_long_a_dead_workers_claim_blocks() -> None:
    store = MemoryDedupStore()
    bus = EventBus(f"memory://{uuid.uuid4().hex}", dedup_store=store)
    handled: list[str] = []

    @bus.subscribe("t", group="g", dedup=True, dedup_lease=0.3)
    async def handle(message: Message) -> None:
        handled.append(message.id)

    # A worker that crashed while holding the claim: its lease is what this subscription sets.
    assert bus.subscribers[0].options.dedup_lease == 0.3
    await store.claim("t/g", "m", owner="dead-worker", lease=0.3)
    async with bus:
        await bus.publish("t", b"x", message_id="m")
        await wait_for(lambda: handled == ["m"], what="the message after the dead claim expired")
    with pytest.raises(ConfigurationError, match="dedup_lease"):
        bus.subscribe("t", group="h", dedup=True, dedup_lease=0)
