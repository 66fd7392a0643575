"""SPI v2 seen from the core: lost deliveries (DESIGN 8, Ownership and Cancellation), a
subscription that breaks and comes back, pause/resume, and SPI version checks."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Sequence

import anyio
import pydantic
import pytest
from anyio.abc import TaskStatus

from eventbus import Batch, ConfigurationError, Delivery, EventBus, Message, RetryPolicy
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for
from eventbus.transports.base import (
    DeliveryOwner,
    Destination,
    RawDelivery,
    Subscription,
    SubscriptionSpec,
)
from eventbus.transports.memory import MemoryTransport
from eventbus.transports.registry import check_spi_version


class Order(pydantic.BaseModel):
    id: int


class Tap:
    """A memory subscription that remembers what it handed out and can break on demand."""

    def __init__(self, inner: Subscription, slow_acks: bool = False) -> None:
        self.inner = inner
        self.handed: list[RawDelivery] = []
        self.breaks = anyio.Event()
        self.slow_acks = slow_acks

    def __aiter__(self) -> AsyncIterator[Sequence[RawDelivery]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Sequence[RawDelivery]]:
        async for batch in self.inner:
            if self.slow_acks:
                batch = [SlowAck(d) for d in batch]  # type: ignore[misc]
            self.handed.extend(batch)
            yield batch

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.inner.run)
            task_status.started()
            await self.breaks.wait()
            raise RuntimeError("the connection under this subscription broke")

    def pause(self) -> None:
        self.inner.pause()

    def resume(self) -> None:
        self.inner.resume()

    async def stop(self) -> None:
        await self.inner.stop()

    async def close(self) -> None:
        self.breaks = anyio.Event()
        await self.inner.close()


class SlowAck:
    """A delivery whose ack yields to the event loop, as a broker's does."""

    def __init__(self, inner: RawDelivery) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def ack(self) -> None:
        await anyio.lowlevel.checkpoint()
        await self._inner.ack()


class TappedTransport(MemoryTransport):
    """Injected through ``EventBus(transport=...)``: the memory broker, with its subscriptions'
    owners and deliveries in view, and publishes that can be held back."""

    def __init__(self, url: str, slow_acks: bool = False) -> None:
        super().__init__(url)
        self.slow_acks = slow_acks
        self.owners: list[DeliveryOwner] = []
        self.taps: list[Tap] = []
        self.publishing = anyio.Event()
        self.gate: anyio.Event | None = None

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        if self.gate is not None:
            self.publishing.set()
            await self.gate.wait()
        await super().publish(to, messages)

    async def subscribe(self, spec: SubscriptionSpec, owner: DeliveryOwner) -> Subscription:
        tap = Tap(await super().subscribe(spec, owner), self.slow_acks)
        self.owners.append(owner)
        self.taps.append(tap)
        return tap


def handed(transport: TappedTransport, message_id: str) -> RawDelivery:
    return next(d for t in transport.taps for d in t.handed if d.message.id == message_id)


async def test_lost_deliveries_never_start_and_running_handlers_are_cancelled(
    url: str, broker: MemoryBroker
) -> None:
    transport = TappedTransport(url)
    bus = EventBus(transport=transport)
    events: list[str] = []

    @bus.subscribe("orders", group="g", concurrency=2, max_in_flight=3)
    async def handle(order: Order, message: Message) -> None:
        events.append(f"start {message.id}")
        if message.key == "k":
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                events.append(f"cancelled {message.id}")
                raise

    async with bus:
        await bus.publish("orders", Order(id=1), key="k", message_id="k1")
        await bus.publish("orders", Order(id=2), key="k", message_id="k2")  # queued behind k1
        await wait_for(lambda: events == ["start k1"])
        owner = transport.owners[0]
        await owner.lost([handed(transport, "k1"), handed(transport, "k2")])
        # lost() returns only once no handler runs a lost delivery.
        assert events == ["start k1", "cancelled k1"]
        stats = bus.subscribers[0].stats
        assert stats.lost == 2
        # Their in-flight room is free again (max_in_flight=3): three more get handled.
        for i in range(3, 6):
            await bus.publish("orders", Order(id=i), key=f"other{i}", message_id=f"o{i}")
        await wait_for(lambda: stats.handled == 3, what="three other keys")
        await anyio.sleep(0.1)
        assert "start k2" not in events, "a lost delivery never starts"
    assert broker.published("orders.g.dlq") == [], "a lost delivery is neither dead-lettered"
    assert stats.failed_attempts == 0 and stats.retried == 0, "... nor counted as a failure"


async def test_a_sync_handler_holds_the_loss_until_it_returns(url: str) -> None:
    transport = TappedTransport(url)
    bus = EventBus(transport=transport)
    events: list[str] = []
    running, release = threading.Event(), threading.Event()

    @bus.subscribe("orders", group="g")
    def handle(order: Order) -> None:  # runs in a thread: it cannot be interrupted
        running.set()
        release.wait(10)
        events.append("handler returned")

    async with bus:
        await bus.publish("orders", Order(id=1), message_id="m1")
        await anyio.to_thread.run_sync(running.wait, 10)
        async with anyio.create_task_group() as tg:

            async def lose() -> None:
                await transport.owners[0].lost([handed(transport, "m1")])
                events.append("lost returned")

            tg.start_soon(lose)
            await anyio.sleep(0.2)
            assert events == [], "lost() waits for the thread"
            release.set()
        assert events == ["handler returned", "lost returned"]
        assert bus.subscribers[0].stats.handled == 0, "its return settles nothing"


async def test_settling_a_lost_delivery_is_a_no_op(url: str, broker: MemoryBroker) -> None:
    transport = TappedTransport(url)
    bus = EventBus(transport=transport)
    kept: list[Delivery] = []

    @bus.subscribe("orders", group="g", ack="manual")
    async def handle(order: Order, delivery: Delivery) -> None:
        kept.append(delivery)  # settled later, from elsewhere

    async with bus:
        await bus.publish("orders", Order(id=1), message_id="m1")
        await wait_for(lambda: len(kept) == 1)
        await transport.owners[0].lost([handed(transport, "m1")])
        await kept[0].ack()
        assert kept[0].settled
    # Never acked: closing the subscription gave the message back to the broker.
    assert [m.id for m in broker.ready("orders", "g")] == ["m1"]


async def test_lost_waits_for_a_settle_already_publishing(url: str) -> None:
    # A manual nack publishes the retry from user code; the transport must not let the
    # partition go while that publish is under way (the new owner would race the copy).
    transport = TappedTransport(url)
    bus = EventBus(transport=transport)
    kept: list[Delivery] = []
    events: list[str] = []

    @bus.subscribe("orders", group="g", ack="manual")
    async def handle(order: Order, delivery: Delivery) -> None:
        kept.append(delivery)
        if delivery.attempt > 1:
            await delivery.ack()  # the retry the nack published

    async with bus:
        await bus.publish("orders", Order(id=1), message_id="m1")
        await wait_for(lambda: len(kept) == 1)
        transport.gate = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def nack() -> None:
                await kept[0].nack(delay=0)
                events.append("nack published")

            async def lose() -> None:
                await transport.publishing.wait()
                await transport.owners[0].lost([handed(transport, "m1")])
                events.append("lost returned")

            tg.start_soon(nack)
            tg.start_soon(lose)
            await transport.publishing.wait()
            await anyio.sleep(0.1)
            assert events == [], "lost() waits for the publish under way"
            transport.gate.set()
        assert events == ["nack published", "lost returned"]


async def test_a_broken_subscription_is_subscribed_again(url: str) -> None:
    transport = TappedTransport(url)
    bus = EventBus(transport=transport)
    attempts: list[tuple[str, int]] = []
    handled: list[str] = []
    gate = anyio.Event()

    @bus.subscribe("orders", group="g")
    async def handle(order: Order, message: Message, delivery: Delivery) -> None:
        attempts.append((message.id, delivery.attempt))
        if message.id == "m1" and len(attempts) == 1:
            await gate.wait()  # still running when the subscription breaks
        handled.append(message.id)

    async with bus:
        await bus.publish("orders", Order(id=1), message_id="m1")
        await wait_for(lambda: attempts == [("m1", 1)])
        transport.taps[0].breaks.set()
        await wait_for(lambda: len(transport.taps) == 2, what="a new subscription")
        await bus.publish("orders", Order(id=2), message_id="m2")
        await wait_for(lambda: sorted(handled) == ["m1", "m2"], what="both messages")
        stats = bus.subscribers[0].stats
        assert stats.restarts == 1 and stats.lost == 1
        # The first run was cancelled, not finished; the message came back from the broker.
        assert attempts[0] == ("m1", 1) and ("m1", 1) in attempts[1:]
        assert handled.count("m1") == 1


async def test_pause_stops_handing_out_and_resume_goes_on(url: str) -> None:
    bus = EventBus(url)
    handled: list[int] = []

    @bus.subscribe("orders", group="g")
    async def handle(order: Order) -> None:
        handled.append(order.id)

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: handled == [1])
        [runner] = bus._runners
        runner.pause()
        await bus.publish("orders", Order(id=2))
        await anyio.sleep(0.3)
        assert handled == [1], "nothing is handed out while paused"
        runner.resume()
        await wait_for(lambda: handled == [1, 2])


async def test_nack_without_delay_waits_for_the_policys_backoff(
    make_bus: type[EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    seen: list[float] = []

    @bus.subscribe(
        "orders",
        group="g",
        ack="manual",
        retry=RetryPolicy(max_attempts=3, initial_delay=0.4, jitter=False),
    )
    async def handle(order: Order, delivery: Delivery) -> None:
        seen.append(time.monotonic())
        if delivery.attempt == 1:
            await delivery.nack()
        else:
            await delivery.ack()

    async with bus:
        published = time.time()
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(seen) == 2)
    [(to, again)] = [(d, m) for d, m in broker.log if d.name == "orders"][1:]
    assert to.group == "g" and again.headers["eventbus-attempt"] == "2"
    assert to.not_before is not None and to.not_before >= published + 0.4
    assert seen[1] - seen[0] >= 0.39, "redelivered after the policy's first backoff"


def test_nack_refuses_a_delay_that_is_not_a_finite_number_of_seconds() -> None:
    delivery = Delivery(
        Message(id="m", topic="t", body=b""), attempt=1, redelivered=False, settler=None
    )  # type: ignore[arg-type]
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="nack delay"):
            anyio.run(delivery.nack, bad)


def test_a_transport_built_for_another_spi_version_is_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_spi_version("kafka", 1)
    text = str(caught.value)
    assert "SPI version 1" in text and "needs version 2" in text and "eventbus-kafka" in text
    check_spi_version("kafka", 2)  # the current one passes


async def test_a_batch_with_a_lost_delivery_is_cancelled_and_the_rest_runs_again(
    url: str, broker: MemoryBroker
) -> None:
    transport = TappedTransport(url)
    bus = EventBus(transport=transport)
    calls: list[list[str]] = []
    cancelled: list[list[str]] = []

    @bus.subscribe("orders", group="g", batch=Batch(max_size=3, max_wait=5.0))
    async def handle(messages: list[Message]) -> None:
        ids = [m.id for m in messages]
        calls.append(ids)
        if len(calls) == 1:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(ids)
                raise

    async with bus:
        for i in range(1, 4):
            await bus.publish("orders", Order(id=i), key="k", message_id=f"m{i}")
        await wait_for(lambda: len(calls) == 1)
        with anyio.fail_after(10):
            await transport.owners[0].lost([handed(transport, "m1")])
        # lost() returned: the batch's handler was cancelled; the rest runs in a new batch.
        assert cancelled == [["m1", "m2", "m3"]]
        await wait_for(lambda: len(calls) == 2)
    assert calls[1] == ["m2", "m3"]
    stats = bus.subscribers[0].stats
    assert stats.lost == 1 and stats.handled == 2 and stats.failed_attempts == 0
    assert broker.published("orders.g.dlq") == []


async def test_a_sync_batch_handler_that_outlives_a_loss_acks_the_rest_once(
    url: str, broker: MemoryBroker
) -> None:
    """A thread cannot be cancelled: the loss waits for it, and what the handler did for the
    items still ours is acked, not handled again."""
    transport = TappedTransport(url, slow_acks=True)
    bus = EventBus(transport=transport)
    calls: list[list[str]] = []
    running, release = threading.Event(), threading.Event()

    @bus.subscribe("orders", group="g", batch=Batch(max_size=3, max_wait=5.0))
    def handle(messages: list[Message]) -> None:  # runs in a thread
        calls.append([m.id for m in messages])
        running.set()
        release.wait(10)

    async with bus:
        for i in range(1, 4):
            await bus.publish("orders", Order(id=i), key=f"k{i}", message_id=f"m{i}")
        await anyio.to_thread.run_sync(running.wait, 10)
        async with anyio.create_task_group() as tg:

            async def lose() -> None:
                with anyio.fail_after(10):
                    await transport.owners[0].lost([handed(transport, "m1")])

            tg.start_soon(lose)
            await anyio.sleep(0.2)
            release.set()
        await anyio.sleep(0.3)
    assert [sorted(c) for c in calls] == [["m1", "m2", "m3"]], "m2, m3 acked, not run again"
    assert [m.id for m in broker.ready("orders", "g")] == ["m1"], "the lost one goes on"


async def test_a_delivery_lost_while_it_waits_for_a_batch_never_reaches_the_handler(
    url: str,
) -> None:
    transport = TappedTransport(url)
    bus = EventBus(transport=transport)
    calls: list[list[str]] = []
    gate = anyio.Event()

    @bus.subscribe("orders", group="g", batch=Batch(max_size=2, max_wait=0.1))
    async def handle(messages: list[Message]) -> None:
        calls.append(sorted(m.id for m in messages))
        if len(calls) == 1:
            await gate.wait()

    async with bus:
        await bus.publish("orders", Order(id=1), key="a", message_id="m1")
        await bus.publish("orders", Order(id=2), key="b", message_id="m2")
        await wait_for(lambda: len(calls) == 1)
        await bus.publish("orders", Order(id=3), key="c", message_id="m3")  # waits its turn
        await anyio.sleep(0.05)
        await transport.owners[0].lost([handed(transport, "m3")])
        gate.set()
        await anyio.sleep(0.4)
    assert calls == [["m1", "m2"]], "m3 was no longer ours when its batch could run"
    assert bus.subscribers[0].stats.lost == 1


async def test_a_loss_during_a_batch_failure_leaves_the_rest_for_a_later_batch(
    url: str, broker: MemoryBroker
) -> None:
    """A synchronous batch handler outlives the loss of A, then raises: the attempt counts for
    nothing, and B (still ours) is neither dead-lettered inside the cancelled batch nor
    stranded: it runs again in a later batch."""
    transport = TappedTransport(url)
    bus = EventBus(transport=transport)
    running, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    @bus.subscribe(
        "orders",
        group="g",
        batch=Batch(max_size=2, max_wait=0.2),
        retry=RetryPolicy(max_attempts=1),
    )
    def handle(messages: list[Message]) -> None:  # runs in a thread
        calls.append(sorted(m.id for m in messages))
        if len(calls) == 1:
            running.set()
            release.wait(10)
            raise RuntimeError("database down")

    async with bus:
        await bus.publish("orders", Order(id=1), key="a", message_id="A")
        await bus.publish("orders", Order(id=2), key="b", message_id="B")
        await anyio.to_thread.run_sync(running.wait, 10)
        async with anyio.create_task_group() as tg:

            async def lose() -> None:
                with anyio.fail_after(10):
                    await transport.owners[0].lost([handed(transport, "A")])

            tg.start_soon(lose)
            await anyio.sleep(0.1)
            release.set()
        await wait_for(lambda: len(calls) == 2)
    assert calls == [["A", "B"], ["B"]]
    assert broker.published("orders.g.dlq") == [], "the failure with A lost counts for nothing"
    assert bus.subscribers[0].stats.handled == 1
