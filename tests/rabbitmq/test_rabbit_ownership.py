"""Ownership at the transport level (SPI v2): when a consuming channel is lost, the subscription
tells its owner at once which handed-out deliveries went with it, even while nobody calls the
iterator; settling those is a no-op afterwards; the channel is restored and they come back."""

import time
from collections.abc import Awaitable, Callable

import aiormq
import anyio
import pytest
from aiormq.exceptions import ChannelNotFoundEntity
from eventbus_rabbitmq import RabbitMQTransport
from eventbus_rabbitmq.acks import WINDOW
from eventbus_rabbitmq.subscription import RabbitSubscription
from rabbit_helpers import Consumer, RecordingOwner, close_connections, nothing_more, take

from eventbus.errors import ConfigurationError
from eventbus.message import Message
from eventbus.transports.base import Destination, RawDelivery, SubscriptionSpec

pytestmark = pytest.mark.amqp

Make = Callable[..., Awaitable[RabbitMQTransport]]
Subscribe = Callable[[RabbitMQTransport, SubscriptionSpec], Awaitable[Consumer]]

PROMPT = 1.0
"""Seconds within which a lost channel must be reported (it takes milliseconds)."""


def msg(queue: str, i: int) -> Message:
    return Message(id=f"m{i}", topic=queue, body=str(i).encode())


def spec(queue: str, prefetch: int) -> SubscriptionSpec:
    return SubscriptionSpec(name=queue, kind="queue", group=None, prefetch=prefetch)


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside ``group`` and the groups nested in it (task groups nest)."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def closing_time(consumer: Consumer) -> list[float]:
    """Filled with the time the consuming channel closes (aiormq's ``closing`` future)."""
    channel = consumer.sub.channel  # type: ignore[attr-defined]
    when: list[float] = []
    channel.closing.add_done_callback(lambda _f: when.append(time.monotonic()))
    return when


async def acked(consumer: Consumer, count: int) -> list[RawDelivery]:
    """The next ``count`` deliveries, each acked once taken (the room is small)."""
    got: list[RawDelivery] = []
    while len(got) < count:
        (delivery,) = await take(consumer, 1, within=30)
        await delivery.ack()
        got.append(delivery)
    return got


async def handed_out_then_idle(consumer: Consumer) -> tuple[list[str], list[str]]:
    """Take the three deliveries the room allows, ack the first (written), settle nothing
    else and stop calling the iterator: (acked ids, handed-out unsettled ids)."""
    first = await take(consumer, 3)
    await first[0].ack()
    await anyio.sleep(WINDOW * 10)
    return [first[0].message.id], [d.message.id for d in first[1:]]


async def test_a_channel_the_broker_closes_reports_exactly_its_unsettled_deliveries(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport("prefetch=10")  # the broker pushes all six
    q = name("own-channel")
    await transport.publish(Destination(q, kind="queue"), [msg(q, i) for i in range(6)])
    consumer = await subscribe(transport, spec(q, prefetch=3))  # three handed out at most
    _acked, unsettled = await handed_out_then_idle(consumer)
    assert not consumer.ready  # take() kept nothing back: the iterator is idle
    assert isinstance(consumer.sub, RabbitSubscription)
    channel = consumer.sub.channel
    assert channel is not None

    start = time.monotonic()
    # The broker closes the channel (404) while nothing iterates: like consumer_timeout would.
    with pytest.raises(ChannelNotFoundEntity):
        await channel.queue_declare(name("missing"), passive=True)
    told_at, lost = await consumer.owner.told(within=PROMPT)
    assert told_at - start < PROMPT
    assert sorted(d.message.id for d in lost) == unsettled == ["m1", "m2"]
    assert len(consumer.owner.calls) == 1

    for delivery in lost:  # settling what was lost: a no-op, never an error
        await delivery.ack()
    # Restored on a fresh channel: the lost and the buffered ones come back, redelivered.
    back = await acked(consumer, 5)
    assert sorted(d.message.id for d in back) == ["m1", "m2", "m3", "m4", "m5"]
    assert all(d.redelivered for d in back)
    assert await nothing_more(consumer)
    assert len(consumer.owner.calls) == 1
    await consumer.close()
    assert await transport.depth(q, "queue") == 0, "the late ack of a lost delivery was dropped"


async def test_a_connection_the_broker_closes_reports_the_unsettled_deliveries_lost(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    connection_name = name("conn")
    transport = await make_transport(f"prefetch=10&name={connection_name}")
    q = name("own-connection")
    await transport.publish(Destination(q, kind="queue"), [msg(q, i) for i in range(6)])
    consumer = await subscribe(transport, spec(q, prefetch=3))
    _acked, unsettled = await handed_out_then_idle(consumer)
    channel_closed = closing_time(consumer)

    start = time.monotonic()
    closed = await anyio.to_thread.run_sync(close_connections, f"{connection_name} consumer")
    assert closed == 1
    # rabbitmqctl returns once the broker closed the connection; the client knows at once.
    told_at, lost = await consumer.owner.told(within=PROMPT)
    print(
        f"loss reported {told_at - start:.3f} s after rabbitmqctl was started, "
        f"{(told_at - channel_closed[0]) * 1000:.2f} ms after the channel's closing future"
    )
    assert told_at - channel_closed[0] < 0.1, "reported as the client learns of the loss"
    assert sorted(d.message.id for d in lost) == unsettled == ["m1", "m2"]

    back = await acked(consumer, 5)  # after reconnecting
    assert sorted(d.message.id for d in back) == ["m1", "m2", "m3", "m4", "m5"]
    assert all(d.redelivered for d in back)
    assert await nothing_more(consumer)
    assert len(consumer.owner.calls) == 1


async def test_losing_a_channel_with_nothing_handed_out_tells_nobody(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("own-nothing")
    consumer = await subscribe(transport, spec(q, prefetch=3))
    channel = consumer.sub.channel  # type: ignore[attr-defined]
    with pytest.raises(ChannelNotFoundEntity):
        await channel.queue_declare(name("missing"), passive=True)
    await transport.publish(Destination(q, kind="queue"), [msg(q, 1)])
    (again,) = await take(consumer, 1)  # restored
    assert again.message.id == "m1"
    assert consumer.owner.calls == []


async def test_a_restore_that_cannot_succeed_breaks_run_and_ends_the_iterator(
    make_transport: Make, name: Callable[[str], str], amqp_url: str
) -> None:
    """The queue is deleted behind the subscription's back and declared again with other
    arguments: the broker cancels the consumer, the restore is refused for good, and ``run``
    raises the translated refusal (the core then reports everything lost and subscribes again
    with backoff); the iterator ends instead of waiting forever."""
    transport = await make_transport("queue_type=quorum")
    q = name("unrestorable")
    await transport.publish(Destination(q, kind="queue"), [msg(q, 1)])
    owner = RecordingOwner()
    sub = await transport.subscribe(spec(q, prefetch=3), owner)
    handed_out: list[RawDelivery] = []
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                await tasks.start(sub.run)
                handed_out.extend(await anext(aiter(sub)))
                connection = await aiormq.connect(amqp_url)
                try:
                    channel = await connection.channel()
                    await channel.queue_delete(q)
                    await channel.queue_declare(q, durable=True)  # classic now
                finally:
                    await connection.close()
                await anyio.sleep_forever()  # run() fails, which ends the task group
    except* ConfigurationError as caught:
        (refusal,) = leaves(caught)
        assert "queue_type" in str(refusal)
    else:
        pytest.fail("run() must raise what restoring cannot fix")
    assert [d.message.id for d in handed_out] == ["m1"]
    assert [[d.message.id for d in lost] for _at, lost in owner.calls] == [["m1"]]
    with pytest.raises(StopAsyncIteration):
        await anext(aiter(sub))
    await sub.close()
