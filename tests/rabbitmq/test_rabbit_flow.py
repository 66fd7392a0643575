"""Flow at the transport level (SPI v2): batches up to the room left by ``spec.prefetch``, and
``pause``/``resume`` that stop handing out without giving up the subscription's consumers."""

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

import aiormq
import anyio
import pytest
from eventbus_rabbitmq import RabbitMQTransport
from eventbus_rabbitmq.subscription import RabbitSubscription
from rabbit_helpers import Consumer

from eventbus.message import Message
from eventbus.transports.base import Destination, RawDelivery, SubscriptionSpec

pytestmark = pytest.mark.amqp

Make = Callable[..., Awaitable[RabbitMQTransport]]
Subscribe = Callable[[RabbitMQTransport, SubscriptionSpec], Awaitable[Consumer]]


def msg(topic: str, i: int, key: str | None = None) -> Message:
    return Message(id=f"m{i}", topic=topic, body=str(i).encode(), key=key)


def ids(batch: Sequence[RawDelivery]) -> list[str]:
    return [d.message.id for d in batch]


def rabbit(consumer: Consumer) -> RabbitSubscription:
    assert isinstance(consumer.sub, RabbitSubscription)
    return consumer.sub


async def buffered(consumer: Consumer, count: int) -> None:
    """Wait until the broker pushed ``count`` deliveries into the subscription's buffer."""
    current = rabbit(consumer).current
    assert current is not None
    with anyio.fail_after(10):
        # Polling: the broker's pushes raise no event a test could wait on.
        while len(current.buffer) < count:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def no_batch_within(consumer: Consumer, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        await consumer.next_batch()
        return False
    return True


async def test_batches_hold_what_is_buffered_and_never_exceed_the_room(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport("prefetch=50")  # the broker may push 50 ...
    q = name("batches")
    spec = SubscriptionSpec(name=q, kind="queue", group=None, prefetch=20)  # ... 20 handed out
    consumer = await subscribe(transport, spec)
    await transport.publish(Destination(q, kind="queue"), [msg(q, i) for i in range(50)])
    await buffered(consumer, 50)

    first = await consumer.next_batch()
    assert ids(first) == [f"m{i}" for i in range(20)], "one batch, up to the room, in order"
    assert await no_batch_within(consumer, 0.5), "room is full: nothing until settled"
    for delivery in first[:5]:
        await delivery.ack()
    second = await consumer.next_batch()
    assert ids(second) == [f"m{i}" for i in range(20, 25)], "exactly the room freed"
    unsettled = [*first[5:], *second]
    assert len(unsettled) == 20
    await unsettled[0].release()  # a release frees room as well
    third = await consumer.next_batch()
    assert len(third) == 1
    for delivery in [*unsettled[1:], *third]:
        await delivery.ack()
    rest: list[RawDelivery] = []
    while len(rest) < 25:  # m25..m49 and the released m5
        batch = await consumer.next_batch()
        assert len(batch) <= 20
        rest.extend(batch)
        for delivery in batch:
            await delivery.ack()
    assert sorted(ids(rest)) == sorted([f"m{i}" for i in range(26, 50)] + ["m5"])
    assert ids(third) == ["m25"]
    assert max(consumer.batches) == 20 and len(consumer.batches) < 10, consumer.batches
    await consumer.close()
    assert await transport.depth(q, "queue") == 0


async def consumers_of(amqp_url: str, queue: str) -> int:
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        ok = await channel.queue_declare(queue, passive=True)
        return ok.consumer_count or 0
    finally:
        await connection.close()


async def test_a_paused_partition_stays_with_its_subscriber_and_resumes(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe, amqp_url: str
) -> None:
    """Two subscribers of a partitioned group own one partition each. One pauses: messages of
    its partition are published and wait (the other subscriber gets none of them, and the
    paused one keeps its consumer: no other is activated); it resumes and handles them."""
    topic = name("pause")
    spec = SubscriptionSpec(name=topic, kind="topic", group="g", prefetch=50)
    paused = await subscribe(await make_transport("partitions=2"), spec)
    other = await subscribe(await make_transport("partitions=2"), spec)  # takes its share
    publisher = await make_transport()
    mine = dict(rabbit(paused).current.consumers)  # type: ignore[union-attr]
    theirs = dict(rabbit(other).current.consumers)  # type: ignore[union-attr]
    assert len(mine) == len(theirs) == 1 and mine.keys() != theirs.keys()
    (my_queue,) = mine
    channel = rabbit(paused).channel

    rabbit(paused).pause()
    handled: dict[str, list[tuple[str, int]]] = defaultdict(list)  # queue -> (key, seq)
    total = 64

    async def drain(consumer: Consumer) -> None:
        async for batch in consumer.sub:
            for delivery in batch:
                queue = delivery.native["queue"]
                handled[queue].append((delivery.message.key or "", int(delivery.message.body)))
                await delivery.ack()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(drain, other)
        await publisher.publish(
            Destination(topic), [msg(topic, i, key=f"key-{i % 16}") for i in range(total)]
        )
        await buffered(paused, 1)  # the broker pushes into the paused subscriber's buffer ...
        assert await no_batch_within(paused, 1.5), "... but nothing is handed out while paused"
        assert my_queue not in handled, "the paused partition did not move"
        assert await consumers_of(amqp_url, my_queue) == 1
        assert rabbit(paused).current.consumers == mine  # type: ignore[union-attr]
        assert rabbit(paused).channel is channel, "the same consumer, never re-registered"
        waiting = len(rabbit(paused).current.buffer)  # type: ignore[union-attr]

        rabbit(paused).resume()
        tasks.start_soon(drain, paused)
        with anyio.fail_after(30):
            while sum(len(rows) for rows in handled.values()) < total:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        tasks.cancel_scope.cancel()

    assert len(handled[my_queue]) >= waiting > 0
    per_key: dict[str, list[int]] = defaultdict(list)
    for queue, rows in handled.items():
        assert queue in (*mine, *theirs)
        for key, seq in rows:
            per_key[key].append(seq)
    assert sum(len(seqs) for seqs in per_key.values()) == total, "each message exactly once"
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), f"{key}: in order"
    assert rabbit(paused).current.consumers == mine  # type: ignore[union-attr]
