"""Scheduled publish on RabbitMQ (DESIGN 11): delay tiers and the forwarder every started bus
runs. Never early, a long delay blocks nothing, a topic message reaches the groups bound when it
falls due, and what waits survives the bus that published it."""

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from eventbus_rabbitmq import RabbitMQTransport

from eventbus import EventBus
from eventbus.message import Message
from eventbus.transports.base import Destination
from eventbus.transports.scheduling import TIERS, tier_for

pytestmark = pytest.mark.amqp

TOLERANCE = 0.05  # clock resolution between the test and the broker round trips


class Handled:
    """What a handler saw, with when."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.order: list[str] = []
        self.event = anyio.Event()
        self.expected = 0

    def add(self, payload: str) -> None:
        self.at[payload] = time.time()
        self.order.append(payload)
        if len(self.order) >= self.expected:
            self.event.set()

    async def wait(self, count: int, within: float) -> None:
        self.expected = count
        if len(self.order) >= count:
            return
        self.event = anyio.Event()
        with anyio.fail_after(within):
            await self.event.wait()


def test_tiers_pick_the_largest_one_not_longer_than_the_delay_left() -> None:
    assert tier_for(0.5) is None
    assert tier_for(1) == 1
    assert tier_for(4.99) == 1
    assert tier_for(3600) == 3600
    assert tier_for(10 * 86400) == TIERS[-1]


async def test_delay_is_never_early_and_a_long_delay_blocks_nothing(
    amqp_url: str, name: Callable[[str], str]
) -> None:
    topic = name("sched")
    bus = EventBus(amqp_url)
    seen = Handled()

    @bus.subscribe(topic, group="g")
    async def on(payload: str) -> None:
        seen.add(payload)

    async with bus:
        published = time.time()
        await bus.publish(topic, "tomorrow", key="k", delay=3600)  # first, same key and queue
        await bus.publish(topic, "two", key="k", delay=2)
        await bus.publish(topic, "now", key="k")
        await seen.wait(2, within=10)
    assert seen.order == ["now", "two"], "the hour-long delay held back nothing"
    assert seen.at["two"] >= published + 2 - TOLERANCE, "never early"
    assert seen.at["two"] <= published + 2 + 3, "and not much late"


async def test_at_and_send_to_a_queue(amqp_url: str, name: Callable[[str], str]) -> None:
    queue = name("sched-q")
    bus = EventBus(amqp_url)
    seen = Handled()

    @bus.consume(queue)
    async def on(payload: str) -> None:
        seen.add(payload)

    async with bus:
        due = datetime.now(UTC) + timedelta(seconds=1.5)
        await bus.send(queue, "at", at=due)
        await bus.send(queue, "past", at=datetime.now(UTC) - timedelta(hours=1))
        await seen.wait(2, within=10)
    assert seen.order == ["past", "at"]
    assert seen.at["at"] >= due.timestamp() - TOLERANCE


async def test_a_group_bound_after_publish_but_before_due_gets_the_message(
    amqp_url: str, name: Callable[[str], str]
) -> None:
    """RabbitMQ refuses a topic publish no group would receive; a scheduled one is routed when
    it falls due, so a group bound meanwhile gets it (and the one bound at publish too)."""
    topic = name("sched-late")
    early = EventBus(amqp_url)
    early_seen, late_seen = Handled(), Handled()

    @early.subscribe(topic, group="early")
    async def on_early(payload: str) -> None:
        early_seen.add(payload)

    late = EventBus(amqp_url)

    @late.subscribe(topic, group="late")
    async def on_late(payload: str) -> None:
        late_seen.add(payload)

    async with early:
        published = time.time()
        await early.publish(topic, "hello", delay=2)
        async with late:  # binds its group now, after the publish, before the due time
            await late_seen.wait(1, within=10)
            await early_seen.wait(1, within=5)
    assert late_seen.at["hello"] >= published + 2 - TOLERANCE
    assert early_seen.at["hello"] >= published + 2 - TOLERANCE


async def test_publish_many_with_a_delay(amqp_url: str, name: Callable[[str], str]) -> None:
    topic = name("sched-many")
    bus = EventBus(amqp_url)
    seen = Handled()

    @bus.subscribe(topic, group="g")
    async def on(payload: str) -> None:
        seen.add(payload)

    async with bus:
        published = time.time()
        await bus.publish_many(topic, ["a", "b", "c"], keys=["1", "2", "3"], delay=1.2)
        await seen.wait(3, within=10)
    assert sorted(seen.order) == ["a", "b", "c"]
    assert min(seen.at.values()) >= published + 1.2 - TOLERANCE


async def test_what_waits_is_forwarded_by_the_next_bus_never_early_never_lost(
    amqp_url: str, name: Callable[[str], str]
) -> None:
    """Published by a bus that only publishes (no forwarder), forwarded through several tiers
    by a worker that is stopped mid-way and started again."""
    topic = name("sched-restart")
    publisher = EventBus(amqp_url)
    seen = Handled()

    def worker() -> EventBus:
        bus = EventBus(amqp_url)

        @bus.subscribe(topic, group="g")
        async def on(payload: str) -> None:
            seen.add(payload)

        return bus

    async with worker():  # binds the group, so the topic publish is routable
        pass
    async with publisher.publisher():
        published = time.time()
        await publisher.publish(topic, "later", delay=6.5)  # 5 s tier, then 1 s, then < 1 s
    await anyio.sleep(3)  # nobody forwards meanwhile
    async with worker():
        await anyio.sleep(3)  # it forwards from the 5 s tier into the 1 s tier, maybe beyond
    assert "later" not in seen.at or seen.at["later"] >= published + 6.5 - TOLERANCE
    async with worker():
        await seen.wait(1, within=15)
    assert seen.order == ["later"]
    assert seen.at["later"] >= published + 6.5 - TOLERANCE


async def test_transport_forwarder_routes_a_scheduled_message_to_a_group(
    amqp_url: str, name: Callable[[str], str]
) -> None:
    """At the SPI: a group-targeted scheduled publish reaches that group only."""
    topic = name("sched-group")
    bus = EventBus(amqp_url)
    got: dict[str, list[str]] = {"a": [], "b": []}
    done = anyio.Event()

    @bus.subscribe(topic, group="a")
    async def on_a(message: Message) -> None:
        got["a"].append(message.id)
        assert not any(h.startswith("eventbus-schedule") for h in message.headers)
        done.set()

    @bus.subscribe(topic, group="b")
    async def on_b(message: Message) -> None:
        got["b"].append(message.id)

    async with bus:
        transport = bus.transport
        assert isinstance(transport, RabbitMQTransport)
        message = Message(id=name("id"), topic=topic, body=b'"x"', key=None)
        await transport.publish(
            Destination(topic, group="a", not_before=time.time() + 1.2), [message]
        )
        with anyio.fail_after(10):
            await done.wait()
        await anyio.sleep(0.3)
    assert got == {"a": [message.id], "b": []}


@pytest.mark.parametrize("delay", [0.4, 1.1])
async def test_a_topic_nobody_is_bound_to_when_due_dead_letters_the_message(
    amqp_url: str, name: Callable[[str], str], delay: float
) -> None:
    """Publishing is accepted (it is checked when due); then nothing would receive it, so the
    forwarder keeps it in ``eventbus.scheduled.dlq`` instead of dropping it."""
    topic = name("sched-nobody")
    bus = EventBus(amqp_url)
    dead: list[Message] = []

    @bus.consume("eventbus.scheduled.dlq")
    async def on_dead(message: Message) -> None:
        dead.append(message)

    async with bus:
        message_id = await bus.publish(topic, "lonely", delay=delay)  # no UnroutableError now
        with anyio.fail_after(15):
            while not any(m.id == message_id for m in dead):  # noqa: ASYNC110
                await anyio.sleep(0.05)
    (mine,) = [m for m in dead if m.id == message_id]
    assert mine.headers["eventbus-dlq-reason"] == "unroutable"
    assert mine.headers["eventbus-schedule-name"] == topic, "where it was going, for a replay"
