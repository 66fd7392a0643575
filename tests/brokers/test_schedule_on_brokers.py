"""Scheduled publish on real Kafka and RabbitMQ (DESIGN 11): delay tiers and the forwarder
every started bus runs. Never early, a long delay blocks nothing, a topic message reaches the
groups bound when it falls due, and what waits survives the bus that published it. Broker
specifics stay beside each adapter's tests (tests/rabbitmq/test_rabbit_schedule.py)."""

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from eventbus import EventBus
from eventbus.message import Message
from eventbus.transports.base import Destination

pytestmark = pytest.mark.timeout(240)

TOLERANCE = 0.05  # clock resolution between the test and the broker round trips
SLOW = {"kafka": 20.0, "rabbitmq": 10.0}
"""Seconds to wait for what is due (Kafka joins a group and fetches more slowly)."""
LATE = {"kafka": 8.0, "rabbitmq": 3.0}
"""How late a due message may be handled and still count as on time."""


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


def subscribed(url: str, topic: str, group: str, seen: Handled) -> EventBus:
    """A bus whose handler for ``group`` of ``topic`` records what it gets in ``seen``."""
    bus = EventBus(url)

    @bus.subscribe(topic, group=group)
    async def on(payload: str) -> None:
        seen.add(payload)

    return bus


async def test_delay_is_never_early_and_a_long_delay_blocks_nothing(
    broker: str, url: str, name: Callable[[str], str]
) -> None:
    topic = name("sched")
    seen = Handled()
    bus = subscribed(url, topic, "g", seen)

    async with bus:
        published = time.time()
        await bus.publish(topic, "tomorrow", key="k", delay=3600)  # first, same key and queue
        await bus.publish(topic, "two", key="k", delay=2)
        await bus.publish(topic, "now", key="k")
        await seen.wait(2, within=SLOW[broker])
    assert seen.order == ["now", "two"], "the hour-long delay held back nothing"
    assert seen.at["two"] >= published + 2 - TOLERANCE, "never early"
    assert seen.at["two"] <= published + 2 + LATE[broker], "and not much late"


async def test_at_and_send_to_a_queue(broker: str, url: str, name: Callable[[str], str]) -> None:
    queue = name("sched-q")
    bus = EventBus(url)
    seen = Handled()

    @bus.consume(queue)
    async def on(payload: str) -> None:
        seen.add(payload)

    async with bus:
        due = datetime.now(UTC) + timedelta(seconds=1.5)
        await bus.send(queue, "at", at=due)
        await bus.send(queue, "past", at=datetime.now(UTC) - timedelta(hours=1))
        await seen.wait(2, within=SLOW[broker])
    assert seen.order == ["past", "at"]
    assert seen.at["at"] >= due.timestamp() - TOLERANCE


async def test_a_group_bound_after_publish_but_before_due_gets_the_message(
    broker: str, url: str, name: Callable[[str], str]
) -> None:
    """A scheduled topic message is routed when it falls due (RabbitMQ would refuse a topic
    publish no group receives): a group bound meanwhile gets it, and the one bound at publish
    too."""
    topic = name("sched-late")
    early_seen, late_seen = Handled(), Handled()
    early = subscribed(url, topic, "early", early_seen)
    late = subscribed(url, topic, "late", late_seen)

    async with early:
        published = time.time()
        await early.publish(topic, "hello", delay=2)
        async with late:  # binds its group now, after the publish, before the due time
            await late_seen.wait(1, within=SLOW[broker])
            await early_seen.wait(1, within=SLOW[broker])
    assert late_seen.at["hello"] >= published + 2 - TOLERANCE
    assert early_seen.at["hello"] >= published + 2 - TOLERANCE


async def test_publish_many_with_a_delay(broker: str, url: str, name: Callable[[str], str]) -> None:
    topic = name("sched-many")
    seen = Handled()
    bus = subscribed(url, topic, "g", seen)

    async with bus:
        published = time.time()
        await bus.publish_many(topic, ["a", "b", "c"], keys=["1", "2", "3"], delay=1.2)
        await seen.wait(3, within=SLOW[broker])
    assert sorted(seen.order) == ["a", "b", "c"]
    assert min(seen.at.values()) >= published + 1.2 - TOLERANCE


async def test_what_waits_is_forwarded_by_the_next_bus_never_early_never_lost(
    broker: str, url: str, name: Callable[[str], str]
) -> None:
    """Published by a bus that only publishes (no forwarder), forwarded through several tiers
    by a worker that is stopped mid-way and started again."""
    topic = name("sched-restart")
    publisher = EventBus(url)
    seen = Handled()

    def worker() -> EventBus:
        return subscribed(url, topic, "g", seen)

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
        await seen.wait(1, within=2 * SLOW[broker])
    assert seen.order == ["later"]
    assert seen.at["later"] >= published + 6.5 - TOLERANCE


async def test_transport_forwarder_routes_a_scheduled_message_to_a_group(
    broker: str, url: str, name: Callable[[str], str]
) -> None:
    """At the SPI: a group-targeted scheduled publish reaches that group only."""
    topic = name("sched-group")
    bus = EventBus(url)
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
        message = Message(id=name("id"), topic=topic, body=b'"x"', key=None)
        await transport.publish(
            Destination(topic, group="a", not_before=time.time() + 1.2), [message]
        )
        with anyio.fail_after(10):
            await done.wait()
        await anyio.sleep(0.3)
    assert got == {"a": [message.id], "b": []}
