"""Read-ahead bounded in bytes (``read_ahead_bytes``) on the real broker: large messages held by
a handler stay mostly in the queue, not in the client, and nothing is lost, duplicated or put
out of order when the consumers are cancelled and registered again."""

from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiormq
import anyio
import pytest
from eventbus_rabbitmq import RabbitMQTransport
from eventbus_rabbitmq.consuming_channel import ConsumingChannel
from eventbus_rabbitmq.subscription import RabbitSubscription
from rabbit_helpers import Consumer, next_or_none

from eventbus.message import Message
from eventbus.transports.base import Destination, RawDelivery, SubscriptionSpec

pytestmark = pytest.mark.amqp

Make = Callable[..., Awaitable[RabbitMQTransport]]
Subscribe = Callable[[RabbitMQTransport, SubscriptionSpec], Awaitable[Consumer]]

BODY = 100 * 1024
BUDGET = 1024 * 1024
TOTAL = 100


def big(topic: str, i: int, key: str | None = None) -> Message:
    return Message(id=f"m{i}", topic=topic, body=str(i).encode().ljust(BODY, b"."), key=key)


def seq(delivery: RawDelivery) -> int:
    return int(delivery.message.body.rstrip(b"."))


def channel_of(consumer: Consumer) -> ConsumingChannel:
    assert isinstance(consumer.sub, RabbitSubscription)
    current = consumer.sub.current
    assert current is not None
    return current


async def ready(amqp_url: str, queues: list[str]) -> int:
    """Messages ready (not delivered) in ``queues``, as the broker counts them."""
    async with broker_view(amqp_url) as count_ready:
        return await count_ready(queues)


@asynccontextmanager
async def broker_view(amqp_url: str) -> AsyncIterator[Callable[[list[str]], Awaitable[int]]]:
    """A function counting the messages ready in some queues, over one connection."""
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()

        async def count_ready(queues: list[str]) -> int:
            declared = [await channel.queue_declare(q, passive=True) for q in queues]
            return sum(ok.message_count or 0 for ok in declared)

        yield count_ready
    finally:
        await connection.close()


async def hold(consumer: Consumer, into: list[RawDelivery]) -> None:
    """Take everything handed out, without settling any of it, until cancelled."""
    while True:
        delivery = await next_or_none(consumer, 1.0)
        if delivery is not None:
            into.append(delivery)


def pushed_to(consumer: Consumer) -> int:
    """Deliveries the broker pushed to ``consumer`` (none is settled while held)."""
    current = channel_of(consumer)
    return len(current.buffer) + len(current.handed_out)


def cancelled(consumer: Consumer) -> bool:
    """The consumer went over the budget and its cancels were answered (``cancel-ok``: the
    broker pushes nothing to a consumer after it)."""
    assert isinstance(consumer.sub, RabbitSubscription)
    return consumer.sub.throttles >= 1


async def publish_while_holding(
    amqp_url: str,
    publisher: RabbitMQTransport,
    messages: list[Message],
    consumers: list[Consumer],
    queues: list[str],
) -> list[list[RawDelivery]]:
    """Publish batches of 5 while every consumer holds what it gets, in lockstep, so that what
    a consumer holds does not depend on how fast the machine is: after each batch, wait until
    nothing is in flight (every message published is pushed or ready in ``queues``) and each
    consumer is within the budget or cancelled. A consumer then crosses the budget by at most
    one batch. Once all are cancelled, the rest is published at once: it must stay ready. Hold
    on for a second after the last one: anything pushed now would be over the bound."""
    held: list[list[RawDelivery]] = [[] for _ in consumers]

    async def caught_up(published: int) -> bool:
        in_flight = published - sum(map(pushed_to, consumers)) - await count_ready(queues)
        return in_flight == 0 and all(
            cancelled(c) or channel_of(c).outstanding_bytes <= BUDGET for c in consumers
        )

    async with broker_view(amqp_url) as count_ready, anyio.create_task_group() as tasks:
        for consumer, into in zip(consumers, held, strict=True):
            tasks.start_soon(hold, consumer, into)
        published = 0
        destination = Destination(messages[0].topic)
        while published < len(messages) and not all(map(cancelled, consumers)):
            await publisher.publish(destination, messages[published : published + 5])
            published += 5
            with anyio.move_on_after(30) as waiting:  # a guard against a hang, not a bound
                while not await caught_up(published):  # noqa: ASYNC110 (broker state)
                    await anyio.sleep(0.02)
            assert not waiting.cancelled_caught, (
                f"{published} published: some still in flight, or over the budget and not cancelled"
            )
        if published < len(messages):
            await publisher.publish(destination, messages[published:])
        await anyio.sleep(1.0)
        tasks.cancel_scope.cancel()
    return held


def assert_bounded(consumer: Consumer, held: list[RawDelivery]) -> None:
    current = channel_of(consumer)
    outstanding = current.outstanding_bytes
    assert outstanding == sum(len(d.message.body) for d in [*held, *current.buffer])
    # Within the budget before the batch that crossed it (see publish_while_holding).
    assert outstanding <= BUDGET + 5 * BODY, outstanding
    assert current.throttled and not current.consumers, "consumers cancelled while over"


async def settle_all(
    consumers: list[Consumer], first: list[list[RawDelivery]]
) -> list[RawDelivery]:
    """Ack what was held, then ack everything else as it comes, until ``TOTAL`` are handled."""
    handled: list[RawDelivery] = []

    async def drain(consumer: Consumer, held: list[RawDelivery]) -> None:
        for delivery in held:
            handled.append(delivery)
            await delivery.ack()
        while len(handled) < TOTAL:
            delivery = await next_or_none(consumer, 0.2)
            if delivery is not None:
                handled.append(delivery)
                await delivery.ack()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            for consumer, held in zip(consumers, first, strict=True):
                tasks.start_soon(drain, consumer, held)
    return handled


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_large_messages_held_by_a_handler_stay_in_the_queue(
    make_transport: Make,
    name: Callable[[str], str],
    subscribe: Subscribe,
    amqp_url: str,
    queue_type: str,
) -> None:
    """prefetch=200 would let the broker push all 100 messages of 100 KiB (10 MiB) at once; with
    a 1 MiB budget the client holds about 1 MiB while the handler sits on them, the rest waits
    ready in the queue, and once settled all 100 arrive exactly once."""
    options = f"prefetch=200&read_ahead_bytes={BUDGET}&queue_type={queue_type}&delivery_limit=2"
    topic = name("bytes")
    spec = SubscriptionSpec(name=topic, kind="topic", group="g", prefetch=200)
    consumer = await subscribe(await make_transport(options), spec)
    publisher = await make_transport(f"queue_type={queue_type}")
    messages = [big(topic, i) for i in range(TOTAL)]
    queues = [f"{topic}.g"]
    (held,) = await publish_while_holding(amqp_url, publisher, messages, [consumer], queues)
    assert held, "something was handed out"
    assert_bounded(consumer, held)
    assert await ready(amqp_url, queues) == TOTAL - pushed_to(consumer) >= TOTAL - 15

    handled = await settle_all([consumer], [held])
    assert sorted(seq(d) for d in handled) == list(range(TOTAL)), "each exactly once"
    if queue_type == "classic":
        assert not any(d.redelivered for d in handled), "a cancel returns nothing"
    else:
        # A quorum queue returns what it had assigned but not sent (x-delivery-count + 1); the
        # consumers then come back with a prefetch that fits the budget, so no message is
        # returned twice: none reaches delivery_limit=2.
        assert not any(d.defect for d in handled), [seq(d) for d in handled if d.defect]
    assert await nothing_left(amqp_url, [f"{topic}.g"])
    assert channel_of(consumer).outstanding_bytes == 0


async def nothing_left(amqp_url: str, queues: list[str]) -> bool:
    return await ready(amqp_url, queues) == 0


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_partitioned_group_keeps_key_order_while_throttled(
    make_transport: Make,
    name: Callable[[str], str],
    subscribe: Subscribe,
    amqp_url: str,
    queue_type: str,
) -> None:
    """Two subscribers of a partitioned group (one partition each) hold what they get: each
    stays within the budget while the rest waits in its partition queue; the partitions stay
    where they are; then everything is handled once, in order per key."""
    options = f"partitions=2&prefetch=200&read_ahead_bytes={BUDGET}&queue_type={queue_type}"
    topic = name("bytes-part")
    spec = SubscriptionSpec(name=topic, kind="topic", group="g", prefetch=200)
    first = await subscribe(await make_transport(options), spec)
    second = await subscribe(await make_transport(options), spec)
    consumers = [first, second]
    owned = [channel_of(c).queues for c in consumers]
    assert len(owned[0]) == len(owned[1]) == 1 and owned[0] != owned[1]
    publisher = await make_transport(f"partitions=2&queue_type={queue_type}")
    messages = [big(topic, i, key=f"key-{i % 10}") for i in range(TOTAL)]
    queues = [f"{topic}.g.0", f"{topic}.g.1"]
    held = await publish_while_holding(amqp_url, publisher, messages, consumers, queues)
    for consumer, got in zip(consumers, held, strict=True):
        assert_bounded(consumer, got)  # each partition gets about 5 MiB
    pushed = sum(map(pushed_to, consumers))
    assert await ready(amqp_url, queues) == TOTAL - pushed >= TOTAL - 30

    handled = await settle_all(consumers, held)
    per_key: dict[str, list[int]] = defaultdict(list)
    for delivery in handled:
        per_key[delivery.message.key or ""].append(seq(delivery))
    assert sorted(seq(d) for d in handled) == list(range(TOTAL)), "each exactly once"
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), f"{key}: in order"
    assert await nothing_left(amqp_url, queues)
    assert [channel_of(c).queues for c in consumers] == owned, "partitions did not move"
    assert all(not channel_of(c).suspended for c in consumers), "consuming again"


async def test_a_partition_handed_over_while_throttled_moves_in_order(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe, amqp_url: str
) -> None:
    """One subscriber owns both partitions and is throttled while it holds what it got. A
    second one joins: the first gives a partition back while throttled (it is not consumed
    again; what was buffered from it goes back to its queue), and once the first settled what
    it held of it, the second takes it over. Nothing is lost or handled twice, keys in order."""
    options = f"partitions=2&prefetch=200&read_ahead_bytes={BUDGET}"
    topic = name("bytes-move")
    spec = SubscriptionSpec(name=topic, kind="topic", group="g", prefetch=200)
    first = await subscribe(await make_transport(options), spec)
    queues = [f"{topic}.g.0", f"{topic}.g.1"]
    assert channel_of(first).queues == frozenset(queues)
    publisher = await make_transport("partitions=2")
    messages = [big(topic, i, key=f"key-{i % 10}") for i in range(TOTAL)]
    (held,) = await publish_while_holding(amqp_url, publisher, messages, [first], queues)
    assert_bounded(first, held)
    assert channel_of(first).suspended == set(queues)

    handled: list[RawDelivery] = []

    async def drain(consumer: Consumer, held: list[RawDelivery]) -> None:
        for delivery in held:
            handled.append(delivery)
            await delivery.ack()
        while len(handled) < TOTAL:
            delivery = await next_or_none(consumer, 0.2)
            if delivery is not None:
                handled.append(delivery)
                await delivery.ack()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            joined: list[Consumer] = []

            async def join() -> None:
                joined.append(await subscribe(await make_transport(options), spec))

            tasks.start_soon(join)
            while len(channel_of(first).queues) > 1:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            (kept,) = channel_of(first).queues
            assert channel_of(first).throttled, "given back while throttled, not consumed again"
            tasks.start_soon(drain, first, held)
            while not joined:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            tasks.start_soon(drain, joined[0], [])
    second = joined[0]
    assert channel_of(second).queues == frozenset(queues) - {kept}
    assert sorted(seq(d) for d in handled) == list(range(TOTAL)), "each exactly once"
    per_key: dict[str, list[int]] = defaultdict(list)
    for delivery in handled:
        per_key[delivery.message.key or ""].append(seq(delivery))
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), f"{key}: in order"
    assert any(d.native["queue"] != kept for d in held), "the first held some of the moved one"
    assert await nothing_left(amqp_url, queues)
