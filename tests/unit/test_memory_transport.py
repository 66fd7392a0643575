"""The in-memory transport's own promises: delays, release order, partition handoff, broker
isolation, and the inspection API users' tests rely on."""

import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable

import anyio
import pydantic

from eventbus import EventBus, Message, Reject, RetryPolicy
from eventbus.testing import MemoryBroker, memory_broker
from eventbus.testing.conformance import wait_for
from eventbus.testing.spi import Opened, RecordingOwner
from eventbus.transports.base import Destination, SubscriptionSpec
from eventbus.transports.memory import LOG_LIMIT, PARTITIONS, MemoryTransport


class Order(pydantic.BaseModel):
    id: int


def msg(message_id: str, topic: str = "q", key: str | None = None) -> Message:
    return Message(id=message_id, topic=topic, body=message_id.encode(), key=key)


def queue_spec(name: str = "q") -> SubscriptionSpec:
    return SubscriptionSpec(name=name, kind="queue", group=None, prefetch=100)


async def subscribe(transport: MemoryTransport, spec: SubscriptionSpec) -> Opened:
    """The memory transport delivers without its (empty) background work running."""
    return Opened(await transport.subscribe(spec, RecordingOwner()), RecordingOwner())


async def test_delayed_publish_waits_without_blocking_its_partition(
    url: str, broker: MemoryBroker
) -> None:
    transport = MemoryTransport(url)
    await transport.connect()
    opened = await subscribe(transport, queue_spec())
    published_at = time.monotonic()
    late = Destination("q", "queue", not_before=time.time() + 0.5)
    await transport.publish(late, [msg("late", key="k")])
    await transport.publish(Destination("q", "queue"), [msg("now", key="k")])
    assert [m.id for m in broker.ready("q")] == ["now", "late"], "delayed ones are listed too"
    assert await transport.depth("q", "queue") == 2
    [first] = await opened.take(1)
    assert first.message.id == "now", "a delayed message does not hold back its partition"
    await first.ack()
    [second] = await opened.take(1)
    assert second.message.id == "late"
    assert time.monotonic() - published_at >= 0.5
    await second.ack()
    assert broker.ready("q") == []
    await transport.close()


async def test_close_releases_unsettled_in_their_original_order(
    url: str, broker: MemoryBroker
) -> None:
    transport = MemoryTransport(url)
    ids = [f"m{i}" for i in range(6)]
    await transport.publish(Destination("q", "queue"), [msg(i, key="same") for i in ids])
    await transport.publish(Destination("q", "queue"), [msg("other", key="other-key")])
    opened = await subscribe(transport, queue_spec())
    got = await opened.take(7)
    assert [d.message.id for d in got if d.message.key == "same"] == ids
    await next(d for d in got if d.message.id == "m2").ack()
    await opened.sub.close()
    # Settling after close is a no-op: the release by close stands.
    await got[0].ack()
    assert sorted(m.id for m in broker.ready("q")) == ["m0", "m1", "m3", "m4", "m5", "other"]
    same_key = [m.id for m in broker.ready("q") if m.key == "same"]
    assert same_key == ["m0", "m1", "m3", "m4", "m5"]

    again = await subscribe(transport, queue_spec())
    redelivered = await again.take(6)
    assert [d.message.id for d in redelivered if d.message.key == "same"] == same_key
    assert all(d.redelivered for d in redelivered)
    await transport.close()


async def test_settling_is_idempotent(url: str, broker: MemoryBroker) -> None:
    transport = MemoryTransport(url)
    await transport.publish(Destination("q", "queue"), [msg("a"), msg("b")])
    opened = await subscribe(transport, queue_spec())
    a, b = await opened.take(2)
    await a.ack()
    await a.ack()
    await a.release()  # after an ack: nothing comes back
    await b.release()
    await b.release()
    await b.ack()  # after a release: stays released
    assert [m.id for m in broker.ready("q")] == ["b"]
    await transport.close()


def _keys_on_both_parities(n: int) -> list[str]:
    """Keys whose partitions are split between two subscriptions (even and odd partitions)."""
    even = [k for k in (f"key-{i}" for i in range(200)) if zlib.crc32(k.encode()) % 2 == 0]
    odd = [k for k in (f"key-{i}" for i in range(200)) if zlib.crc32(k.encode()) % 2 == 1]
    return even[: n // 2] + odd[: n - n // 2]


async def test_partition_handoff_keeps_per_key_order(make_bus: Callable[..., EventBus]) -> None:
    keys = _keys_on_both_parities(8)
    assert len({zlib.crc32(k.encode()) % PARTITIONS for k in keys}) > 1
    seen: dict[str, list[int]] = defaultdict(list)
    by_bus: Counter[int] = Counter()
    running: Counter[str] = Counter()
    overlaps: list[str] = []
    buses = [make_bus(), make_bus()]
    for n, bus in enumerate(buses):

        def register(bus: EventBus = bus, n: int = n) -> None:
            @bus.subscribe("orders", group="g", concurrency=4)
            async def work(order: Order, message: Message) -> None:
                key = message.key or ""
                running[key] += 1
                if running[key] > 1:
                    overlaps.append(key)
                await anyio.sleep(0.002)
                seen[key].append(order.id)
                by_bus[n] += 1
                running[key] -= 1

        register()

    per_key = 40
    async with buses[0]:
        for i in range(per_key // 2):
            for key in keys:
                await buses[0].publish("orders", Order(id=i), key=key)
        await wait_for(lambda: by_bus[0] >= 20)
        async with buses[1]:  # joins while the first holds messages of every partition
            for i in range(per_key // 2, per_key):
                for key in keys:
                    await buses[0].publish("orders", Order(id=i), key=key)
            await wait_for(lambda: sum(map(len, seen.values())) == per_key * len(keys), within=60)
    assert not overlaps, f"a key ran in both subscriptions at once: {overlaps[:5]}"
    for key in keys:
        assert seen[key] == list(range(per_key)), f"{key} out of order"
    assert by_bus[1] > 0, "the second subscription took over some partitions"


async def test_named_brokers_are_isolated(broker_name: str) -> None:
    here, there = f"{broker_name}-a", f"{broker_name}-b"
    bus_a, bus_b = EventBus(f"memory://{here}"), EventBus(f"memory://{there}")
    got: dict[str, list[int]] = defaultdict(list)

    @bus_a.subscribe("orders", group="g")
    async def on_a(order: Order) -> None:
        got["a"].append(order.id)

    @bus_b.subscribe("orders", group="g")
    async def on_b(order: Order) -> None:
        got["b"].append(order.id)

    async with bus_a, bus_b:
        await bus_a.publish("orders", Order(id=1))
        await wait_for(lambda: got["a"] == [1])
        await anyio.sleep(0.2)
    assert got["b"] == []
    assert len(memory_broker(here).published("orders")) == 1
    assert memory_broker(there).published("orders") == []
    assert memory_broker(here) is not memory_broker(there)


async def test_same_name_is_the_same_broker(url: str, broker: MemoryBroker) -> None:
    first, second = EventBus(url), EventBus(url)
    got: list[int] = []

    @second.consume("jobs")
    async def job(order: Order) -> None:
        got.append(order.id)

    async with first, second:
        await first.send("jobs", Order(id=5))
        await wait_for(lambda: got == [5])
    assert first.transport.broker is second.transport.broker is broker  # type: ignore[attr-defined]


async def test_inspection_api(make_bus: Callable[..., EventBus], broker: MemoryBroker) -> None:
    bus = make_bus()
    gate = anyio.Event()

    @bus.subscribe("orders", group="billing", concurrency=1, max_in_flight=1)
    async def billing(order: Order) -> None:
        if order.id == 3:
            raise Reject("no")
        await gate.wait()

    # Another group that never starts consuming: everything stays ready there.
    audit = SubscriptionSpec("orders", "topic", "audit", 10)
    await MemoryTransport(bus.url).subscribe(audit, RecordingOwner())
    async with bus:
        for i in range(1, 4):
            await bus.publish("orders", Order(id=i), message_id=f"o{i}")
        await bus.send("emails", Order(id=9), message_id="e1")
        await wait_for(lambda: bus.subscribers[0].stats.received == 1)
        assert [m.id for m in broker.ready("orders", "audit")] == ["o1", "o2", "o3"]
        assert len(broker.ready("orders", "billing")) == 2, "one is in flight"
        assert [m.id for m in broker.ready("emails")] == ["e1"]
        assert await bus.transport.depth("emails", "queue") == 1
        gate.set()
        await wait_for(lambda: len(broker.published("orders.billing.dlq")) == 1)
    assert broker.ready("orders", "billing") == []
    assert [m.id for m in broker.published("orders")] == ["o1", "o2", "o3"]
    assert [m.id for m in broker.published("orders.billing.dlq")] == ["o3"]
    assert [d.name for d, _ in broker.log] == ["orders"] * 3 + ["emails", "orders.billing.dlq"]
    assert broker.ready("nothing-here") == [] and broker.ready("orders", "no-group") == []
    assert await bus.transport.depth("nothing-here", "queue") is None
    assert await bus.transport.depth("orders", "topic") is None
    broker.reset()
    assert not broker.log and broker.ready("emails") == []


async def test_broadcast_gets_only_what_is_published_while_it_runs(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    publisher = make_bus()
    got: list[int] = []
    listener = make_bus()

    @listener.subscribe("news")
    async def listen(order: Order) -> None:
        got.append(order.id)

    async with publisher:
        await publisher.publish("news", Order(id=1))  # nobody listens yet
        async with listener:
            await publisher.publish("news", Order(id=2))
            await wait_for(lambda: got == [2])
        await publisher.publish("news", Order(id=3))  # gone again
        async with listener:
            await publisher.publish("news", Order(id=4))
            await wait_for(lambda: got == [2, 4])
        await anyio.sleep(0.1)
    assert got == [2, 4]


async def test_redelivery_to_one_group_only(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    # Destination.group: a publish for one group (retry, replay) reaches no other group.
    bus = make_bus()
    got: dict[str, list[str]] = defaultdict(list)

    @bus.subscribe("orders", group="a")
    async def a(message: Message) -> None:
        got["a"].append(message.id)

    @bus.subscribe("orders", group="b", retry=RetryPolicy(max_attempts=1))
    async def b(message: Message) -> None:
        got["b"].append(message.id)

    async with bus:
        await bus.transport.publish(Destination("orders", "topic", group="b"), [msg("only-b")])
        await bus.publish("orders", b"x", message_id="both")
        await wait_for(lambda: len(got["a"]) == 1 and len(got["b"]) == 2)
        await anyio.sleep(0.1)
    assert got == {"a": ["both"], "b": ["only-b", "both"]}


async def test_the_inspection_log_is_bounded(url: str, broker: MemoryBroker) -> None:
    # DESIGN 8, bounded memory on any run length: the oldest publishes are forgotten first.
    transport = MemoryTransport(url)
    batch = [msg(f"m{i}") for i in range(LOG_LIMIT + 10)]
    await transport.publish(Destination("q", "queue"), batch)
    assert len(broker.log) == LOG_LIMIT
    assert broker.log[0][1].id == "m10" and broker.log[-1][1].id == f"m{LOG_LIMIT + 9}"
