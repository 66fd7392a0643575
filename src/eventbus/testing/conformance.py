"""The transport conformance suite (DESIGN 6): the delivery contract, checked on a real broker.

A transport proves itself by subclassing `ConformanceSuite` in a test module and overriding the
``bus_url`` fixture::

    from eventbus.testing.conformance import ConformanceSuite

    class TestMyBrokerConformance(ConformanceSuite):
        @pytest.fixture
        def bus_url(self) -> str:
            return "mybroker://127.0.0.1:1234"

Cases read the transport's `Capabilities` and skip what a broker cannot do natively. Every case
uses fresh topic, group and queue names, so the suite can run against a shared broker. Waits are
generous (a Kafka group join can take seconds); nothing asserts on speed.
"""

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pydantic
import pytest

from eventbus import (
    Delivery,
    EventBus,
    MemoryDedupStore,
    Message,
    Reject,
    RetryPolicy,
    UnroutableError,
)
from eventbus import headers as h
from eventbus.dlq import dlq_replay, dlq_show
from eventbus.transports.base import Capabilities, Destination, SubscriptionSpec

__all__ = ["ConformanceSuite", "wait_for"]

pytestmark = pytest.mark.timeout(300)


class Order(pydantic.BaseModel):
    id: int
    note: str = ""


async def wait_for(
    predicate: Callable[[], bool], within: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await anyio.sleep(0.02)


def _fast_retry(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_delay=0.01, max_delay=0.05, jitter=False)


class BusFixtures:
    """The fixtures every suite here shares: ``bus_url`` (override it), fresh ``name``s per
    case, and ``make_bus``."""

    name_prefix = "conf"

    @pytest.fixture
    def bus_url(self) -> str:
        raise NotImplementedError("override the bus_url fixture with your transport's URL")

    @pytest.fixture
    def name(self) -> Iterator[Callable[[str], str]]:
        suffix = uuid.uuid4().hex[:10]
        yield lambda base: f"{self.name_prefix}-{base}-{suffix}"

    @pytest.fixture
    def make_bus(self, bus_url: str) -> Callable[..., EventBus]:
        def make(**options: Any) -> EventBus:
            options.setdefault("graceful_timeout", 10.0)
            return EventBus(bus_url, **options)

        return make


class ConformanceSuite(BusFixtures):
    """Subclass and override ``bus_url``. Class attributes scale the heavier cases."""

    stress_messages = 10_000
    stress_consumers = 4
    settle_time = 1.0
    """Seconds to keep listening when asserting that something does *not* arrive."""

    @pytest.fixture
    def capabilities(self, make_bus: Callable[..., EventBus]) -> Capabilities:
        return make_bus().transport.capabilities

    # -- basics -------------------------------------------------------------------------------

    async def test_round_trip_keeps_all_metadata(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("meta")
        got: list[Message] = []

        @bus.subscribe(topic, group=name("g"))
        async def handler(body: bytes, message: Message) -> None:
            got.append(message)

        big = bytes(random.Random(1).getrandbits(8) for _ in range(1024 * 1024))
        binary = bytes(range(256)) * 4
        before = datetime.now(UTC)
        async with bus:
            await bus.publish(
                topic,
                binary,
                key="clé-1",
                headers={"tenant": "ünïcødé ✓", "trace": "abc"},
                message_id="id-1",
                correlation_id="corr-1",
            )
            await bus.publish(topic, big, key="big", message_id="id-2")
            await bus.publish(topic, Order(id=7, note="ß"), message_id="id-3")
            await wait_for(lambda: len(got) == 3, what="3 messages")
        first = next(m for m in got if m.id == "id-1")
        assert first.body == binary
        assert first.key == "clé-1"
        assert first.headers["tenant"] == "ünïcødé ✓"
        assert first.headers["trace"] == "abc"
        assert first.correlation_id == "corr-1"
        assert first.topic == topic
        assert first.content_type == "application/octet-stream"
        assert (
            before - timedelta(seconds=5)
            <= first.timestamp
            <= datetime.now(UTC) + timedelta(seconds=5)
        )
        assert next(m for m in got if m.id == "id-2").body == big
        model = next(m for m in got if m.id == "id-3")
        assert model.type == "Order"
        assert model.content_type == "application/json"
        assert Order.model_validate_json(model.body) == Order(id=7, note="ß")

    async def test_reply_address_travels_with_the_message(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, queue = make_bus(), name("replyto")
        got: list[Message] = []

        @bus.consume(queue)
        async def handler(message: Message) -> None:
            got.append(message)

        async with bus:
            request = Message(id="r-1", topic=queue, body=b"{}", reply_to=name("replies"))
            await bus.transport.publish(Destination(queue, "queue"), [request])
            await wait_for(lambda: len(got) == 1)
        assert got[0].reply_to == name("replies") and got[0].id == "r-1"

    async def test_publish_before_any_group_follows_capabilities(
        self,
        make_bus: Callable[..., EventBus],
        name: Callable[[str], str],
        capabilities: Capabilities,
    ) -> None:
        bus, topic = make_bus(), name("unbound")
        async with bus:
            if capabilities.unbound_topic == "refuse":
                with pytest.raises(UnroutableError):
                    await bus.publish(topic, Order(id=1))
                return
            await bus.publish(topic, Order(id=1))  # kept: no error
        # "keep": a group that subscribes for the first time afterwards reads it (Kafka with
        # offset_reset=earliest, memory's retention).
        late = make_bus()
        got: list[int] = []

        @late.subscribe(topic, group=name("late"))
        async def handler(order: Order) -> None:
            got.append(order.id)

        async with late:
            await wait_for(lambda: got == [1], what="the message published before the group")

    async def test_pause_hands_out_nothing_until_resumed(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("pause")
        got: list[int] = []

        @bus.subscribe(topic, group=name("g"))
        async def handler(order: Order) -> None:
            got.append(order.id)

        async with bus:
            await bus.publish(topic, Order(id=1))
            await wait_for(lambda: got == [1])
            [runner] = bus._runners
            runner.pause()
            await bus.publish(topic, Order(id=2))
            await anyio.sleep(self.settle_time)
            assert got == [1], "nothing is handed out while paused"
            runner.resume()
            await wait_for(lambda: got == [1, 2], what="the message published while paused")

    async def test_backlog_counts_what_waits_and_drains_to_zero(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic, group = name("backlog"), name("g")
        spec = SubscriptionSpec(topic, "topic", group, prefetch=1)
        handled: list[int] = []

        def consumer() -> EventBus:
            bus = make_bus()

            @bus.subscribe(topic, group=group)
            async def handler(order: Order) -> None:
                handled.append(order.id)

            return bus

        async with consumer():
            pass  # the group exists from now on; nobody consumes it below
        async with make_bus() as publisher:
            for i in range(20):
                await publisher.publish(topic, Order(id=i), key=f"k{i % 4}")
            backlog = await publisher.transport.backlog(spec)
            assert backlog is not None and backlog.total == 20, backlog
            assert backlog.consumers == 0
            async with consumer() as bus:
                await wait_for(lambda: len(handled) == 20, what="the backlog handled")
                with anyio.fail_after(30):  # Kafka: until the commit reached the broker
                    backlog = await publisher.transport.backlog(spec)
                    while backlog is None or backlog.total:
                        await anyio.sleep(0.2)
                        backlog = await publisher.transport.backlog(spec)
                assert backlog.consumers is None or backlog.consumers >= 1
                assert all(runner.connected for runner in bus._runners)
            missing = SubscriptionSpec(name("nothing"), "topic", group, prefetch=1)
            assert await publisher.transport.backlog(missing) is None

    async def test_fan_out_to_two_groups(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("fanout")
        seen: dict[str, list[int]] = defaultdict(list)

        @bus.subscribe(topic, group=name("billing"))
        async def billing(order: Order) -> None:
            seen["billing"].append(order.id)

        @bus.subscribe(topic, group=name("shipping"))
        async def shipping(order: Order) -> None:
            seen["shipping"].append(order.id)

        async with bus:
            for i in range(10):
                await bus.publish(topic, Order(id=i))
            await wait_for(lambda: len(seen["billing"]) == 10 and len(seen["shipping"]) == 10)
        assert sorted(seen["billing"]) == sorted(seen["shipping"]) == list(range(10))

    async def test_competing_consumers_split_the_work(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("compete")
        seen: dict[int, list[int]] = defaultdict(list)
        buses = [make_bus() for _ in range(2)]
        for n, bus in enumerate(buses):

            def register(bus: EventBus = bus, n: int = n) -> None:
                @bus.subscribe(topic, group=name("workers"), concurrency=4)
                async def work(order: Order) -> None:
                    seen[n].append(order.id)
                    await anyio.sleep(0.01)

            register()
        async with buses[0], buses[1]:
            for i in range(60):
                await buses[0].publish(topic, Order(id=i), key=f"k{i}")
            await wait_for(lambda: len(seen[0]) + len(seen[1]) >= 60, what="60 deliveries")
            await anyio.sleep(self.settle_time)
        assert sorted(seen[0] + seen[1]) == list(range(60)), "each message exactly once"
        assert not set(seen[0]) & set(seen[1]), "no message to both consumers"
        assert seen[0] and seen[1], "both consumers got a share"

    async def test_ephemeral_broadcast_reaches_every_instance(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("broadcast")
        seen: dict[int, list[int]] = defaultdict(list)
        buses = [make_bus() for _ in range(2)]
        for n, bus in enumerate(buses):

            def register(bus: EventBus = bus, n: int = n) -> None:
                @bus.subscribe(topic)
                async def listen(order: Order) -> None:
                    seen[n].append(order.id)

            register()
        async with buses[0], buses[1]:
            for i in range(5):
                await buses[0].publish(topic, Order(id=i))
            await wait_for(lambda: len(seen[0]) == 5 and len(seen[1]) == 5)
        assert sorted(seen[0]) == sorted(seen[1]) == list(range(5))

    async def test_queue_send_and_consume(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        queue = name("queue")
        seen: dict[int, list[int]] = defaultdict(list)
        buses = [make_bus() for _ in range(2)]
        for n, bus in enumerate(buses):

            def register(bus: EventBus = bus, n: int = n) -> None:
                @bus.consume(queue, concurrency=2)
                async def work(order: Order) -> None:
                    seen[n].append(order.id)

            register()
        async with buses[0], buses[1]:
            for i in range(20):
                await buses[1].send(queue, Order(id=i), key=f"k{i}")
            await wait_for(lambda: len(seen[0]) + len(seen[1]) >= 20)
            await anyio.sleep(self.settle_time)
        assert sorted(seen[0] + seen[1]) == list(range(20))

    async def test_per_key_order_under_concurrency(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("order")
        seen: dict[str, list[int]] = defaultdict(list)
        running: Counter[str] = Counter()
        overlaps: list[str] = []
        concurrent = 0
        peak = 0
        rng = random.Random(5)

        @bus.subscribe(topic, group=name("ordered"), concurrency=16)
        async def work(order: Order, delivery: Delivery) -> None:
            nonlocal concurrent, peak
            key = delivery.message.key or ""
            running[key] += 1
            concurrent += 1
            peak = max(peak, concurrent)
            if running[key] > 1:
                overlaps.append(key)
            await anyio.sleep(rng.random() * 0.01)
            seen[key].append(order.id)
            running[key] -= 1
            concurrent -= 1

        keys = [f"key-{k}" for k in range(20)]
        async with bus:
            n = 0
            for round_ in range(10):
                for key in keys:
                    await bus.publish(topic, Order(id=round_), key=key)
                    n += 1
            await wait_for(lambda: sum(map(len, seen.values())) == n, within=60)
        assert not overlaps, f"same key ran concurrently: {overlaps[:5]}"
        for key in keys:
            assert seen[key] == list(range(10)), f"{key} out of order: {seen[key]}"
        assert peak > 1, "different keys ran concurrently"

    # -- acknowledgement ----------------------------------------------------------------------

    async def test_manual_ack_unacked_redelivered_after_restart(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("manual")
        first: list[int] = []
        second: list[int] = []
        bus1 = make_bus(graceful_timeout=0.5)

        @bus1.subscribe(topic, group=name("g"), ack="manual", max_in_flight=20)
        async def keep_odd(order: Order, delivery: Delivery) -> None:
            first.append(order.id)
            if order.id % 2 == 0:
                await delivery.ack()

        async with bus1:
            for i in range(10):
                await bus1.publish(topic, Order(id=i), key=f"k{i}")
            await wait_for(lambda: len(first) == 10)
        bus2 = make_bus()

        @bus2.subscribe(topic, group=name("g"))
        async def rest(order: Order) -> None:
            second.append(order.id)

        async with bus2:
            await wait_for(lambda: len(second) >= 5, what="the 5 unacked messages")
            await anyio.sleep(self.settle_time)
        assert sorted(second) == [1, 3, 5, 7, 9]

    async def test_settle_after_handler_returned(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("later")
        held: list[Delivery] = []
        acked: list[int] = []

        @bus.subscribe(topic, group=name("g"), ack="manual")
        async def hold(order: Order, delivery: Delivery) -> None:
            held.append(delivery)

        async with bus:
            await bus.publish(topic, Order(id=1))
            await wait_for(lambda: len(held) == 1)
            await anyio.sleep(0.2)
            assert not held[0].settled
            await held[0].ack()
            await held[0].ack()  # idempotent
            acked.append(1)
            assert held[0].settled
        assert bus.subscribers[0].stats.handled == 1

    async def test_nack_redelivers_not_before_the_delay(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("nack")
        attempts: list[tuple[int, int, float]] = []

        @bus.subscribe(topic, group=name("g"), ack="manual", retry=RetryPolicy(max_attempts=5))
        async def flaky(order: Order, delivery: Delivery) -> None:
            attempts.append((order.id, delivery.attempt, time.monotonic()))
            if delivery.attempt == 1:
                await delivery.nack(delay=1.0 if order.id == 1 else None)
            else:
                await delivery.ack()

        async with bus:
            await bus.publish(topic, Order(id=1), key="a")
            await bus.publish(topic, Order(id=2), key="b")
            await wait_for(lambda: len(attempts) >= 4)
            await anyio.sleep(self.settle_time)
        by_id: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for order_id, attempt, at in attempts:
            by_id[order_id].append((attempt, at))
        assert [a for a, _ in by_id[1]] == [1, 2]
        assert [a for a, _ in by_id[2]] == [1, 2]
        assert by_id[1][1][1] - by_id[1][0][1] >= 0.95, "nack(delay=1.0) came back early"

    async def test_reject_dead_letters_with_metadata(
        self,
        make_bus: Callable[..., EventBus],
        name: Callable[[str], str],
        capabilities: Capabilities,
    ) -> None:
        bus, topic = make_bus(), name("reject")
        dead: list[Message] = []
        calls = 0

        @bus.subscribe(topic, group=name("billing"))
        async def refuse(order: Order) -> None:
            nonlocal calls
            calls += 1
            raise Reject("card declined")

        @bus.consume(f"{topic}.{name('billing')}.dlq")
        async def dlq(message: Message) -> None:
            dead.append(message)

        async with bus:
            await bus.publish(
                topic,
                Order(id=1),
                key="k",
                headers={"tenant": "a"},
                message_id="m-1",
                correlation_id="c-1",
            )
            await wait_for(lambda: len(dead) == 1)
        letter = dead[0]
        assert calls == 1, "rejected messages are not retried"
        assert letter.id == "m-1" and letter.key == "k" and letter.correlation_id == "c-1"
        assert Order.model_validate_json(letter.body) == Order(id=1)
        assert letter.headers["tenant"] == "a"
        assert letter.headers[h.DLQ_REASON] == "rejected"
        assert letter.headers[h.ERROR_TYPE] == "eventbus.errors.Reject"
        assert letter.headers[h.ERROR_MESSAGE] == "card declined"
        assert "Reject" in letter.headers[h.ERROR_TRACEBACK]
        assert letter.headers[h.ORIGINAL_TOPIC] == topic
        assert letter.headers[h.ORIGINAL_GROUP] == name("billing")
        assert letter.headers[h.ATTEMPTS] == "1"
        datetime.fromisoformat(letter.headers[h.FAILED_AT])
        for fact in bus.transport.capabilities.native:
            assert f"eventbus-original-{fact}" in letter.headers, f"native fact {fact!r}"

    async def test_retry_succeeds_on_third_attempt_with_backoff(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("retry")
        times: list[float] = []
        policy = RetryPolicy(max_attempts=5, initial_delay=0.2, multiplier=2.0, jitter=False)

        @bus.subscribe(topic, group=name("g"), retry=policy)
        async def flaky(order: Order, delivery: Delivery) -> None:
            times.append(time.monotonic())
            assert delivery.attempt == len(times)
            if delivery.attempt < 3:
                raise ConnectionError("try again")

        async with bus:
            await bus.publish(topic, Order(id=1))
            await wait_for(lambda: len(times) == 3)
            await anyio.sleep(self.settle_time)
        assert len(times) == 3
        assert bus.subscribers[0].stats.handled == 1
        assert bus.subscribers[0].stats.dead_lettered == 0
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[0] >= 0.19 and gaps[1] >= 0.39, f"backoff not observed: {gaps}"

    async def test_retry_via_broker_carries_the_attempt(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("viabroker")
        attempts: list[int] = []
        policy = RetryPolicy(max_attempts=3, initial_delay=0.1, jitter=False, via_broker=True)

        @bus.subscribe(topic, group=name("g"), retry=policy)
        async def flaky(order: Order, delivery: Delivery) -> None:
            attempts.append(delivery.attempt)
            if delivery.attempt < 3:
                raise ConnectionError("later")

        async with bus:
            await bus.publish(topic, Order(id=1))
            await wait_for(lambda: len(attempts) == 3)
            await anyio.sleep(self.settle_time)
        assert attempts == [1, 2, 3]
        assert bus.subscribers[0].stats.redelivered == 2

    async def test_retries_exhausted_dead_letters_with_attempts(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("exhaust")
        dead: list[Message] = []
        calls = 0

        @bus.subscribe(topic, group=name("g"), retry=_fast_retry(3))
        async def broken(order: Order) -> None:
            nonlocal calls
            calls += 1
            raise ValueError(f"bad order {order.id}")

        @bus.consume(f"{topic}.{name('g')}.dlq")
        async def dlq(message: Message) -> None:
            dead.append(message)

        async with bus:
            await bus.publish(topic, Order(id=9))
            await wait_for(lambda: len(dead) == 1)
        assert calls == 3
        assert dead[0].headers[h.DLQ_REASON] == "retries-exhausted"
        assert dead[0].headers[h.ATTEMPTS] == "3"
        assert dead[0].headers[h.ERROR_TYPE] == "builtins.ValueError"
        assert dead[0].headers[h.ERROR_MESSAGE] == "bad order 9"

    async def test_handler_raising_a_base_exception_is_retried_then_dead_lettered(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        # DESIGN 8: a stray CancelledError (not the bus's own) is a failed attempt like any
        # other, and an error text no broker can encode still gets its dead letter out.
        bus, topic, group = make_bus(), name("baseexc"), name("g")
        calls: list[int] = []
        letters: list[Message] = []

        @bus.subscribe(topic, group=group, retry=_fast_retry(2))
        async def handler(order: Order) -> None:
            calls.append(order.id)
            if order.id == 1:
                raise asyncio.CancelledError("caf\udce9 cancelled by a library")

        @bus.consume(f"{topic}.{group}.dlq")
        async def dlq(message: Message) -> None:
            letters.append(message)

        async with bus:
            await bus.publish(topic, Order(id=1), key="k")
            await bus.publish(topic, Order(id=2), key="k")
            await wait_for(lambda: len(letters) == 1 and 2 in calls)
        assert calls == [1, 1, 2]
        [letter] = letters
        assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
        assert letter.headers[h.ERROR_TYPE] == "asyncio.exceptions.CancelledError"
        assert letter.headers[h.ERROR_MESSAGE] == "caf\ufffd cancelled by a library"

    async def test_undecodable_body_dead_lettered_and_worker_goes_on(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("poison")
        good: list[int] = []
        dead: list[Message] = []

        @bus.subscribe(topic, group=name("g"))
        async def handle(order: Order) -> None:
            good.append(order.id)

        @bus.consume(f"{topic}.{name('g')}.dlq")
        async def dlq(message: Message) -> None:
            dead.append(message)

        async with bus:
            await bus.publish(topic, b"\xff not json", message_id="poison-1")
            await bus.publish(topic, {"id": "not-a-number"}, message_id="poison-2")
            await bus.publish(topic, Order(id=1))
            await wait_for(lambda: len(good) == 1 and len(dead) == 2)
        assert good == [1]
        assert sorted(m.id for m in dead) == ["poison-1", "poison-2"]
        assert {m.headers[h.DLQ_REASON] for m in dead} == {"undecodable"}
        assert next(m for m in dead if m.id == "poison-1").body == b"\xff not json"

    # -- timeouts and expiry (DESIGN 11) ------------------------------------------------------

    async def test_handler_timeout_fails_the_attempt_and_the_key_goes_on(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic, group = make_bus(), name("timeout"), name("g")
        calls: list[tuple[int, int]] = []
        letters: list[Message] = []

        @bus.subscribe(topic, group=group, timeout=0.5, retry=_fast_retry(2))
        async def handler(order: Order, delivery: Delivery) -> None:
            calls.append((order.id, delivery.attempt))
            if order.id == 1:
                await anyio.sleep_forever()  # would hang the key forever without timeout=

        @bus.consume(f"{topic}.{group}.dlq")
        async def dlq(message: Message) -> None:
            letters.append(message)

        async with bus:
            await bus.publish(topic, Order(id=1), key="k", message_id="hangs-1")
            await bus.publish(topic, Order(id=2), key="k")
            await wait_for(lambda: len(letters) == 1 and (2, 1) in calls)
        assert calls == [(1, 1), (1, 2), (2, 1)]
        [letter] = letters
        assert letter.id == "hangs-1"
        assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
        assert letter.headers[h.ERROR_TYPE] == "eventbus.errors.HandlerTimeoutError"
        assert letter.headers[h.ATTEMPTS] == "2"

    async def test_expired_message_dead_lettered_unhandled_a_live_one_handled(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic, group = name("expiry"), name("g")
        handled: list[str] = []
        letters: list[Message] = []

        def consumer() -> EventBus:
            bus = make_bus()

            @bus.subscribe(topic, group=group)
            async def handler(body: str) -> None:
                handled.append(body)

            @bus.consume(f"{topic}.{group}.dlq")
            async def dlq(message: Message) -> None:
                letters.append(message)

            return bus

        async with consumer():  # the group exists (RabbitMQ refuses a topic without one)
            pass
        publisher = make_bus()
        async with publisher.publisher():
            await publisher.publish(topic, "stale", key="k", ttl=0.5, message_id="stale-1")
            await publisher.publish(topic, "fresh", key="k", ttl=300, message_id="fresh-1")
        await anyio.sleep(1.0)  # the consumer starts after the first one expired
        async with consumer():
            await wait_for(lambda: handled == ["fresh"] and len(letters) == 1)
        [letter] = letters
        assert letter.id == "stale-1"
        assert letter.headers[h.DLQ_REASON] == "expired"
        assert letter.headers[h.ERROR_TYPE] == "eventbus.dispatch.expiry.ExpiredError"
        assert h.EXPIRES_AT not in letter.headers, "a dead letter does not expire in its queue"
        assert float(letter.headers[h.ORIGINAL_EXPIRES_AT]) < time.time()

    # -- deduplication ------------------------------------------------------------------------

    async def test_dedup_same_id_three_times_once_per_group_across_restart(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("dedup")
        store = MemoryDedupStore()  # outlives the bus: stands for a persistent store
        calls: Counter[tuple[str, str]] = Counter()

        def build() -> EventBus:
            bus = make_bus(dedup_store=store)

            @bus.subscribe(topic, group=name("a"), dedup=True)
            async def a(order: Order, message: Message) -> None:
                calls[("a", message.id)] += 1

            @bus.subscribe(topic, group=name("b"), dedup=True)
            async def b(order: Order, message: Message) -> None:
                calls[("b", message.id)] += 1

            return bus

        bus = build()
        async with bus:
            for _ in range(3):
                await bus.publish(topic, Order(id=1), message_id="same")
            await wait_for(lambda: sum(s.stats.duplicates for s in bus.subscribers) == 4)
        assert calls == {("a", "same"): 1, ("b", "same"): 1}
        bus = build()
        async with bus:
            await bus.publish(topic, Order(id=1), message_id="same")
            await wait_for(lambda: sum(s.stats.duplicates for s in bus.subscribers) == 2)
        assert calls == {("a", "same"): 1, ("b", "same"): 1}

    async def test_dedup_with_failure_retries_and_processes_once(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("dedupfail")
        calls: list[int] = []
        done: list[int] = []

        @bus.subscribe(topic, group=name("g"), dedup=True, retry=_fast_retry(3))
        async def flaky(order: Order, delivery: Delivery) -> None:
            calls.append(delivery.attempt)
            if delivery.attempt == 1:
                raise RuntimeError("first attempt fails")
            done.append(order.id)

        async with bus:
            await bus.publish(topic, Order(id=1), message_id="x")
            await wait_for(lambda: done == [1])
            await bus.publish(topic, Order(id=1), message_id="x")
            await wait_for(lambda: bus.subscribers[0].stats.duplicates == 1)
        assert calls == [1, 2]
        assert done == [1]

    # -- bounds and shutdown ------------------------------------------------------------------

    async def test_max_in_flight_never_exceeded(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        bus, topic = make_bus(), name("inflight")
        outstanding = 0
        peak = 0
        acked = 0

        async def ack_later(delivery: Delivery) -> None:
            nonlocal outstanding, acked
            await anyio.sleep(0.05)
            outstanding -= 1
            acked += 1
            await delivery.ack()

        async with anyio.create_task_group() as settlers:

            @bus.subscribe(topic, group=name("g"), ack="manual", concurrency=5, max_in_flight=5)
            async def hold(order: Order, delivery: Delivery) -> None:
                nonlocal outstanding, peak
                outstanding += 1
                peak = max(peak, outstanding)
                settlers.start_soon(ack_later, delivery)  # settled by another task, later

            async with bus:
                for i in range(40):
                    await bus.publish(topic, Order(id=i), key=f"k{i}")
                await wait_for(lambda: acked == 40, within=60)
        assert peak <= 5, f"{peak} unsettled at once with max_in_flight=5"
        assert peak >= 2

    async def test_graceful_shutdown_finishes_in_flight_and_redelivers_unstarted(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("graceful")
        started: list[int] = []
        finished: list[int] = []
        later: list[int] = []
        bus1 = make_bus(graceful_timeout=10.0)

        @bus1.subscribe(topic, group=name("g"), concurrency=2, max_in_flight=10)
        async def slow(order: Order) -> None:
            started.append(order.id)
            await anyio.sleep(0.5)
            finished.append(order.id)

        async with bus1:
            for i in range(8):
                await bus1.publish(topic, Order(id=i), key=f"k{i}")
            await wait_for(lambda: len(started) >= 2)
        assert sorted(started) == sorted(finished), "every started handler finished"
        bus2 = make_bus()

        @bus2.subscribe(topic, group=name("g"), concurrency=8)
        async def rest(order: Order) -> None:
            later.append(order.id)

        async with bus2:
            await wait_for(lambda: len(later) >= 8 - len(finished), what="unstarted messages")
            await anyio.sleep(self.settle_time)
        assert not set(later) & set(finished), "finished messages were redelivered"
        assert sorted(later + finished) == list(range(8))

    async def test_graceful_timeout_cancels_and_redelivers(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("timeout")
        started: list[int] = []
        later: list[int] = []
        bus1 = make_bus(graceful_timeout=0.3)

        @bus1.subscribe(topic, group=name("g"))
        async def stuck(order: Order) -> None:
            started.append(order.id)
            await anyio.sleep(60)

        async with bus1:
            await bus1.publish(topic, Order(id=1))
            await wait_for(lambda: started == [1])
        assert bus1.subscribers[0].stats.handled == 0
        bus2 = make_bus()

        @bus2.subscribe(topic, group=name("g"))
        async def rest(order: Order, delivery: Delivery) -> None:
            later.append(order.id)

        async with bus2:
            await wait_for(lambda: later == [1], what="the cancelled message again")

    async def test_closed_and_reopened_subscription_loses_nothing(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("reopen")
        seen: list[int] = []

        def build() -> EventBus:
            bus = make_bus()

            @bus.subscribe(topic, group=name("g"), concurrency=4)
            async def collect(order: Order) -> None:
                seen.append(order.id)

            return bus

        publisher = make_bus()
        async with publisher:
            async with build():
                for i in range(20):
                    await publisher.publish(topic, Order(id=i), key=f"k{i % 5}")
                await wait_for(lambda: len(seen) >= 5)
            for i in range(20, 40):
                await publisher.publish(topic, Order(id=i), key=f"k{i % 5}")
            async with build():
                await wait_for(lambda: set(seen) >= set(range(40)), what="all 40")
        assert set(seen) == set(range(40))

    # -- scheduled publish (DESIGN 11) ----------------------------------------------------------

    async def test_scheduled_publish_is_never_early_and_a_long_delay_blocks_nothing(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        """An hour-long delay published first, on the same key (so the same partition or
        queue), holds back neither a message due in 1.5 s nor one due now."""
        bus, topic, queue = make_bus(), name("sched"), name("sched-q")
        handled: dict[str, float] = {}

        @bus.subscribe(topic, group=name("g"))
        async def on_topic(note: str) -> None:
            handled[note] = time.time()

        @bus.consume(queue)
        async def on_queue(note: str) -> None:
            handled[note] = time.time()

        async with bus:
            published = time.time()
            await bus.publish(topic, "hour", key="k", delay=3600)
            await bus.publish(topic, "soon", key="k", delay=1.5)
            await bus.publish(topic, "now", key="k")
            await bus.send(queue, "q-hour", key="k", delay=3600)
            due = datetime.now(UTC) + timedelta(seconds=1.5)
            await bus.send(queue, "q-at", key="k", at=due)
            await bus.publish_many(topic, ["many-1", "many-2"], delay=1.5)
            await wait_for(lambda: len(handled) == 5, what="the due messages")
            await anyio.sleep(self.settle_time)
        assert set(handled) == {"now", "soon", "q-at", "many-1", "many-2"}
        assert handled["now"] < handled["soon"]
        for note in ("soon", "many-1", "many-2"):
            assert handled[note] >= published + 1.5 - 0.05, f"{note} came early"
        assert handled["q-at"] >= due.timestamp() - 0.05, "at= came early"

    async def test_scheduled_topic_message_reaches_a_group_bound_before_it_is_due(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        """Whatever a transport does with a topic nobody subscribed to yet, a scheduled message
        goes to the groups there are when it falls due."""
        topic = name("sched-late")
        first, second = make_bus(), make_bus()
        got: dict[str, float] = {}

        @first.subscribe(topic, group=name("early"))
        async def early(note: str) -> None:
            got["early"] = time.time()

        @second.subscribe(topic, group=name("late"))
        async def late(note: str) -> None:
            got["late"] = time.time()

        async with first:
            published = time.time()
            await first.publish(topic, "x", delay=2.5)
            async with second:
                await wait_for(lambda: len(got) == 2, what="both groups")
        assert min(got.values()) >= published + 2.5 - 0.05

    # -- dead-letter replay -------------------------------------------------------------------

    async def test_dlq_replay_reaches_only_the_failed_group(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("replay")
        a_calls: list[int] = []
        b_calls: list[int] = []
        fail = True
        bus = make_bus()

        @bus.subscribe(topic, group=name("a"))
        async def a(order: Order, delivery: Delivery) -> None:
            a_calls.append(delivery.attempt)
            if fail:
                raise Reject("not yet")

        @bus.subscribe(topic, group=name("b"))
        async def b(order: Order) -> None:
            b_calls.append(order.id)

        dlq = f"{topic}.{name('a')}.dlq"
        async with bus:
            await bus.publish(topic, Order(id=1))
            await wait_for(lambda: len(a_calls) == 1 and len(b_calls) == 1)
            await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1)
            shown = await dlq_show(bus.transport, dlq, limit=5, idle=5.0)
            assert [m.headers[h.DLQ_REASON] for m in shown] == ["rejected"]
            fail = False
            assert await dlq_replay(bus.transport, dlq, idle=5.0) == 1
            await wait_for(lambda: len(a_calls) == 2, what="the replay in group a")
            await anyio.sleep(self.settle_time)
        assert a_calls == [1, 1], "a replay starts with a fresh attempt count"
        assert b_calls == [1], "group b did not get the replay"

    # -- stress -------------------------------------------------------------------------------

    async def test_stress_counts_add_up(
        self, make_bus: Callable[..., EventBus], name: Callable[[str], str]
    ) -> None:
        topic = name("stress")
        total = self.stress_messages
        rng = random.Random(42)
        poison = set(rng.sample(range(total), total // 20))
        store = MemoryDedupStore()
        effects: Counter[int] = Counter()
        dead: list[int] = []
        buses = [make_bus(dedup_store=store) for _ in range(self.stress_consumers)]
        for bus in buses:

            def register(bus: EventBus = bus) -> None:
                @bus.subscribe(
                    topic, group=name("g"), concurrency=8, dedup=True, retry=_fast_retry(2)
                )
                async def work(order: Order) -> None:
                    if order.id in poison:
                        raise ValueError("always fails")
                    effects[order.id] += 1

            register()
        reader = make_bus()

        @reader.consume(f"{topic}.{name('g')}.dlq", concurrency=8)
        async def dlq(order: Order) -> None:
            dead.append(order.id)

        async with reader, contextlib.AsyncExitStack() as stack:
            for bus in buses:
                await stack.enter_async_context(bus)
            batch = 500
            for start in range(0, total, batch):
                ids = range(start, min(start + batch, total))
                await buses[0].publish_many(
                    topic, [Order(id=i) for i in ids], keys=[f"k{i % 97}" for i in ids]
                )
            await wait_for(
                lambda: len(effects) + len(set(dead)) >= total, within=240, what="every message"
            )
            await anyio.sleep(self.settle_time)
        assert set(effects) == set(range(total)) - poison
        assert max(effects.values()) == 1, "a message's effect happened twice"
        assert sorted(set(dead)) == sorted(poison)
        assert len(effects) + len(set(dead)) == total
