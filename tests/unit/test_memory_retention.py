"""memory:// retention (`Capabilities.unbound_topic` "keep"): what a topic received before a
group first subscribed reaches that group, in order, within the bound; broadcast
subscriptions and groups that existed already start at the end."""

from collections.abc import Callable

import pytest

from eventbus import ConfigurationError, EventBus, Message
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for
from eventbus.testing.spi import Opened, RecordingOwner
from eventbus.transports.base import Destination, SubscriptionSpec
from eventbus.transports.memory import RETENTION, MemoryTransport


def msg(message_id: str, key: str | None = None) -> Message:
    return Message(id=message_id, topic="t", body=message_id.encode(), key=key)


def group_spec(group: str | None) -> SubscriptionSpec:
    return SubscriptionSpec(name="t", kind="topic", group=group, prefetch=1000)


async def test_a_group_subscribing_later_gets_the_earlier_messages_in_order(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    publisher, consumer = make_bus(), make_bus()
    got: list[str] = []

    @consumer.subscribe("t", group="late")
    async def handle(message: Message) -> None:
        got.append(message.id)

    async with publisher:
        for i in range(5):
            await publisher.publish("t", b"x", message_id=f"m{i}", key="k")
        async with consumer:
            await wait_for(lambda: len(got) == 5)
            await publisher.publish("t", b"x", message_id="after", key="k")
            await wait_for(lambda: len(got) == 6)
    assert got == ["m0", "m1", "m2", "m3", "m4", "after"]
    assert broker.retention == RETENTION == 10_000


async def test_retention_keeps_only_the_last_n_per_topic(url: str, broker: MemoryBroker) -> None:
    transport = MemoryTransport(f"{url}?retention=3")
    assert broker.retention == 3
    await transport.publish(Destination("t"), [msg(f"m{i}") for i in range(8)])
    await transport.publish(Destination("other"), [msg("o1")])
    assert [m.id for m in broker.retained("t")] == ["m5", "m6", "m7"]
    await transport.subscribe(group_spec("g"), RecordingOwner())
    assert [m.id for m in broker.ready("t", "g")] == ["m5", "m6", "m7"]
    assert [m.id for m in broker.retained("other")] == ["o1"], "the bound is per topic"
    broker.retention = 1  # shrinking keeps the newest
    assert [m.id for m in broker.retained("t")] == ["m7"]
    broker.reset()
    assert broker.retained("t") == []


async def test_groups_that_exist_and_broadcasts_start_at_the_end(
    url: str, broker: MemoryBroker
) -> None:
    transport = MemoryTransport(url)
    await transport.subscribe(group_spec("early"), RecordingOwner())
    await transport.publish(Destination("t"), [msg("m1")])
    broadcast = await transport.subscribe(group_spec(None), RecordingOwner())
    await transport.publish(Destination("t"), [msg("m2")])
    await transport.subscribe(group_spec("new"), RecordingOwner())
    assert [m.id for m in broker.ready("t", "early")] == ["m1", "m2"], "not given m1 twice"
    assert [m.id for m in broker.ready("t", "new")] == ["m1", "m2"]
    [first] = await Opened(broadcast, RecordingOwner()).take(1)
    assert first.message.id == "m2", "a broadcast starts at the end"


async def test_a_retry_for_one_group_is_not_retained(url: str, broker: MemoryBroker) -> None:
    transport = MemoryTransport(url)
    await transport.publish(Destination("t", group="g"), [msg("retry-for-g")])
    await transport.publish(Destination("t"), [msg("m1")])
    assert [m.id for m in broker.retained("t")] == ["m1"]
    assert sorted(m.id for m in broker.ready("t", "g")) == ["m1", "retry-for-g"]
    await transport.subscribe(group_spec("h"), RecordingOwner())
    assert [m.id for m in broker.ready("t", "h")] == ["m1"]


async def test_retention_zero_keeps_nothing(url: str, broker: MemoryBroker) -> None:
    transport = MemoryTransport(f"{url}?retention=0")
    await transport.publish(Destination("t"), [msg("m1")])
    await transport.subscribe(group_spec("g"), RecordingOwner())
    assert broker.retained("t") == [] and broker.ready("t", "g") == []


def test_retention_must_be_a_count() -> None:
    with pytest.raises(ConfigurationError, match="retention must be an integer >= 0"):
        MemoryBroker(retention=-1)
