"""Scheduled publish (DESIGN 11) on memory://: ``delay=``/``at=`` on publish, send and
publish_many; never early; a long delay blocks nothing; a topic message reaches the groups
bound when it falls due; bad values are refused before anything is published."""

import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest

from eventbus import ConfigurationError, EventBus, Message
from eventbus.errors import BrokerUnavailableError, PublishError, UnroutableError
from eventbus.schedule import not_before
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for
from eventbus.transports import scheduling
from eventbus.transports.base import DeliveryOwner, Destination, Subscription, SubscriptionSpec
from eventbus.transports.memory import MemoryTransport

TOLERANCE = 0.05


def test_delay_and_at_become_an_absolute_due_time() -> None:
    before = time.time()
    due = not_before(2.5, None)
    assert due is not None and before + 2.5 <= due <= time.time() + 2.5
    at = datetime.now(UTC) + timedelta(minutes=5)
    assert not_before(None, at) == at.timestamp()
    other_zone = at.astimezone(timezone(timedelta(hours=-7)))
    assert not_before(None, other_zone) == at.timestamp()
    assert not_before(None, None) is None
    assert not_before(0, None) is None, "no delay: at once"
    assert not_before(None, datetime.now(UTC) - timedelta(days=1)) is None, "past: now"


@pytest.mark.parametrize(
    ("delay", "at", "match"),
    [
        (1.0, datetime.now(UTC), "not both"),
        (-0.1, None, ">= 0"),
        (math.nan, None, "finite"),
        (math.inf, None, "finite"),
        (True, None, "number of seconds"),
        ("5", None, "number of seconds"),
        (None, datetime(2030, 1, 1), "aware"),
        (None, "2030-01-01T00:00:00Z", "datetime"),
    ],
)
def test_bad_schedules_are_refused(delay: object, at: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        not_before(delay, at)  # type: ignore[arg-type]


async def test_bad_schedule_publishes_nothing(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    async with bus.publisher():
        with pytest.raises(ConfigurationError):
            await bus.publish("t", "x", delay=-1)
        with pytest.raises(ConfigurationError):
            await bus.send("q", "x", at=datetime(2030, 1, 1))
        with pytest.raises(ConfigurationError):
            await bus.publish_many("t", ["x"], delay=1, at=datetime.now(UTC))
    assert broker.published("t") == [] and broker.published("q") == []


async def test_delay_is_never_early_and_a_long_delay_blocks_nothing(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    handled: dict[str, float] = {}

    @bus.subscribe("t", group="g")
    async def on(payload: str) -> None:
        handled[payload] = time.time()

    async with bus:
        published = time.time()
        await bus.publish("t", "tomorrow", key="k", delay=86_400)
        await bus.publish("t", "soon", key="k", delay=0.3)
        await bus.publish("t", "now", key="k")
        await wait_for(lambda: len(handled) == 2)
    assert set(handled) == {"now", "soon"}
    assert handled["soon"] >= published + 0.3 - TOLERANCE


async def test_at_on_send_and_delay_on_publish_many(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    handled: dict[str, float] = {}

    @bus.consume("q")
    async def on_q(payload: str) -> None:
        handled[payload] = time.time()

    @bus.subscribe("t", group="g")
    async def on_t(payload: str) -> None:
        handled[payload] = time.time()

    async with bus:
        due = datetime.now(UTC) + timedelta(seconds=0.3)
        await bus.send("q", "at", at=due)
        published = time.time()
        await bus.publish_many("t", ["a", "b"], keys=["1", "2"], delay=0.4)
        await wait_for(lambda: len(handled) == 3)
    assert handled["at"] >= due.timestamp() - TOLERANCE
    assert min(handled["a"], handled["b"]) >= published + 0.4 - TOLERANCE


@pytest.mark.parametrize("retention", [None, 0])
async def test_a_group_bound_before_due_gets_a_scheduled_topic_message(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, retention: int | None
) -> None:
    """Whether or not the topic retains messages for new groups."""
    if retention is not None:
        broker.retention = retention
    publisher, late = make_bus(), make_bus()
    got: list[tuple[str, float]] = []

    @late.subscribe("t", group="late")
    async def on(message: Message) -> None:
        got.append((message.id, time.time()))

    async with publisher.publisher():
        published = time.time()
        message_id = await publisher.publish("t", "x", delay=0.3)
        async with late:
            await wait_for(lambda: len(got) == 1)
            await anyio.sleep(0.1)
    assert got[0][0] == message_id
    assert got[0][1] >= published + 0.3 - TOLERANCE
    assert len(got) == 1, "once, not once from retention and once from the schedule"


# -- the forwarder of delay tiers (eventbus.transports.scheduling), on memory queues -----------


async def _forward_once(
    transport: MemoryTransport,
    publish: Callable[[Destination, Sequence[Message]], Awaitable[None]],
    done: Callable[[], bool],
) -> None:
    spec = SubscriptionSpec("tiers-out", "queue", None, scheduling.PREFETCH)

    async def subscribe(owner: DeliveryOwner) -> Subscription:
        return await transport.subscribe(spec, owner)

    forwarder = scheduling.Forwarder(subscribe, publish, dead_letters="tiers-out.dlq")
    async with anyio.create_task_group() as tg:
        await tg.start(forwarder.run)
        await wait_for(done)
        tg.cancel_scope.cancel()


def test_stamped_headers_round_trip_and_are_removed() -> None:
    to = Destination("orders", "topic", "billing", not_before=1_900_000_000.125)
    original = Message(id="m", topic="orders", body=b"x", key="k", headers={"tenant": "a"})
    stamped = scheduling.stamp(original, to)
    assert stamped.headers["tenant"] == "a"
    back_to, back = scheduling.scheduled(dataclasses.replace(stamped, topic="eventbus.tier.5s"))
    assert back_to == to
    assert back == original, "the final hop carries the message as published"


async def test_forwarder_sends_due_messages_on_and_dead_letters_bad_ones(
    url: str, broker: MemoryBroker
) -> None:
    transport = MemoryTransport(url)
    await transport.connect()
    due = Destination("orders", "topic", not_before=time.time() - 1)
    good = scheduling.stamp(Message(id="good", topic="tiers-out", body=b"1"), due)
    bare = Message(id="bare", topic="tiers-out", body=b"2")
    await transport.publish(Destination("tiers-out", "queue"), [good, bare])
    await _forward_once(
        transport,
        transport.publish,
        lambda: bool(broker.published("orders")) and bool(broker.published("tiers-out.dlq")),
    )
    (forwarded,) = broker.published("orders")
    assert forwarded.id == "good" and forwarded.topic == "orders"
    assert not any(h.startswith("eventbus-schedule") for h in forwarded.headers)
    (dead,) = broker.published("tiers-out.dlq")
    assert dead.id == "bare" and dead.headers["eventbus-dlq-reason"] == "unroutable"
    assert broker.ready("tiers-out") == [], "both acked"
    await transport.close()


async def test_forwarder_dead_letters_what_nothing_receives_and_keeps_what_the_broker_refused(
    url: str, broker: MemoryBroker
) -> None:
    transport = MemoryTransport(url)
    await transport.connect()
    due = Destination("orders", "topic", not_before=time.time() - 1)
    stamped = [
        scheduling.stamp(Message(id=i, topic="tiers-out", body=b""), due) for i in ("gone", "down")
    ]
    await transport.publish(Destination("tiers-out", "queue"), stamped)
    tries: list[str] = []

    async def publish(to: Destination, messages: Sequence[Message]) -> None:
        if to.name == "orders":
            tries.append(messages[0].id)
            if messages[0].id == "gone":
                raise UnroutableError("no queue is bound")
            raise PublishError("not confirmed", {0: BrokerUnavailableError("rabbit:5672", "down")})
        await transport.publish(to, messages)

    await _forward_once(
        transport,
        publish,
        lambda: bool(broker.published("tiers-out.dlq")) and tries.count("down") >= 2,
    )
    assert [m.id for m in broker.published("tiers-out.dlq")] == ["gone"]
    assert tries.count("down") >= 2, "an outage is not the message's fault: forwarded again"
    await transport.close()


async def test_a_ttl_counts_from_when_a_scheduled_message_falls_due(url: str) -> None:
    # Counted from the publish, a ttl shorter than the delay would make the message expire
    # before it could ever be handled; a scheduled message gets its whole ttl once due.
    bus = EventBus(url)
    handled: list[float] = []

    @bus.consume("jobs")
    async def job(message: Message) -> None:
        handled.append(time.time())

    async with bus:
        sent = time.time()
        await bus.send("jobs", {}, delay=0.5, ttl=0.3)
        await wait_for(lambda: len(handled) == 1)
    assert handled[0] >= sent + 0.5 - TOLERANCE
    assert bus.subscribers[0].stats.expired == 0
