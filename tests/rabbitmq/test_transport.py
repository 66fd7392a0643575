"""The RabbitMQ transport through the SPI, on a real broker: routing, confirms, settling."""

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import aiormq
import anyio
import pytest
from eventbus_rabbitmq import RabbitMQTransport, wire
from eventbus_rabbitmq.connection import open_channel
from eventbus_rabbitmq.errors import is_connection_lost, translate
from eventbus_rabbitmq.publisher import _Route
from pamqp.commands import Basic
from rabbit_helpers import Consumer, drain_partitions, nothing_more, take

from eventbus.errors import (
    AuthenticationError,
    AuthorizationError,
    BrokerUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
    UnroutableError,
)
from eventbus.message import Message
from eventbus.transports.base import Destination, SubscriptionSpec

pytestmark = pytest.mark.amqp

Make = Callable[..., Awaitable[RabbitMQTransport]]
Subscribe = Callable[[RabbitMQTransport, SubscriptionSpec], Awaitable[Consumer]]


def msg(topic: str, i: int, key: str | None = None, **headers: str) -> Message:
    return Message(id=f"m{i}", topic=topic, body=str(i).encode(), key=key, headers=headers)


def group(topic: str, name: str | None, prefetch: int = 10) -> SubscriptionSpec:
    return SubscriptionSpec(name=topic, kind="topic", group=name, prefetch=prefetch)


def queue(name: str, prefetch: int = 10) -> SubscriptionSpec:
    return SubscriptionSpec(name=name, kind="queue", group=None, prefetch=prefetch)


async def test_unroutable_publish_raises(make_transport: Make, name: Callable[[str], str]) -> None:
    transport = await make_transport()
    topic = name("nobody")
    with pytest.raises(UnroutableError) as info:
        await transport.publish(Destination(topic), [msg(topic, 1), msg(topic, 2)])
    assert set(info.value.failures) == {0, 1}
    with pytest.raises(UnroutableError):
        await transport.publish(Destination(topic, group="missing"), [msg(topic, 1)])


async def test_batch_is_confirmed_and_delivered_in_order(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    topic = name("batch")
    sub = await subscribe(transport, group(topic, "g", prefetch=50))
    await transport.publish(Destination(topic), [msg(topic, i) for i in range(300)])
    got = []
    for _ in range(300):
        (delivery,) = await take(sub, 1)
        got.append(delivery.message.id)
        await delivery.ack()
    assert got == [f"m{i}" for i in range(300)]
    assert await transport.depth(f"{topic}.g", "queue") == 0


async def test_same_id_twice_in_one_batch_both_confirmed(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    topic = name("dupid")
    sub = await subscribe(transport, group(topic, "g"))
    same = msg(topic, 1)
    await transport.publish(Destination(topic), [same, same, same])
    assert [d.message.id for d in await take(sub, 3)] == ["m1"] * 3


async def test_every_group_gets_every_message_and_targeting_reaches_one(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    topic = name("fanout")
    a = await subscribe(transport, group(topic, "a"))
    b = await subscribe(transport, group(topic, "b"))
    await transport.publish(Destination(topic), [msg(topic, 1)])
    assert [d.message.id for d in await take(a, 1)] == ["m1"]
    assert [d.message.id for d in await take(b, 1)] == ["m1"]
    await transport.publish(Destination(topic, group="b"), [msg(topic, 2)])
    assert [d.message.id for d in await take(b, 1)] == ["m2"]
    assert await nothing_more(a)


async def test_group_targeted_publish_finds_a_partitioned_group(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    """The publisher has no ``partitions`` option (think: a DLQ replay from the CLI)."""
    worker = await make_transport("partitions=3")
    publisher = await make_transport()
    topic = name("partitioned-target")
    sub = await subscribe(worker, group(topic, "g"))
    other = await subscribe(worker, group(topic, "other"))
    await publisher.publish(Destination(topic, group="g"), [msg(topic, 1, key="k")])
    await publisher.publish(
        Destination(topic, group="g", not_before=time.time() + 0.2), [msg(topic, 2, key="k")]
    )
    assert sorted(d.message.id for d in await take(sub, 2)) == ["m1", "m2"]
    assert await nothing_more(other)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_delayed_message_is_not_early_and_does_not_block_others(
    make_transport: Make,
    name: Callable[[str], str],
    queue_type: str,
    subscribe: Subscribe,
    forward: Callable[[RabbitMQTransport], Awaitable[None]],
) -> None:
    """1.5 s goes through the 1 s delay tier, then the forwarder (eventbus.transports.scheduling),
    which waits the rest in process."""
    transport = await make_transport(f"queue_type={queue_type}")
    await forward(transport)
    topic = name("delay")
    sub = await subscribe(transport, group(topic, "g"))
    start = time.monotonic()
    await transport.publish(
        Destination(topic, group="g", not_before=time.time() + 1.5), [msg(topic, 1)]
    )
    await transport.publish(Destination(topic), [msg(topic, 2)])
    first, second = await take(sub, 2)
    assert (first.message.id, second.message.id) == ("m2", "m1"), "the delay blocks nothing"
    assert time.monotonic() - start >= 1.5, "never delivered before its delay"
    assert "x-death" not in second.message.headers


async def test_delayed_send_to_a_queue(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("delayq")
    await transport.publish(Destination(q, kind="queue", not_before=time.time() + 0.3), [msg(q, 1)])
    sub = await subscribe(transport, queue(q))
    assert [d.message.id for d in await take(sub, 1)] == ["m1"]


async def test_a_due_time_already_passed_is_delivered_at_once(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    topic = name("overdue")
    sub = await subscribe(transport, group(topic, "g"))
    await transport.publish(
        Destination(topic, group="g", not_before=time.time() - 5), [msg(topic, 1)]
    )
    assert [d.message.id for d in await take(sub, 1, within=1)] == ["m1"]


def test_the_delay_left_is_computed_when_the_message_is_written() -> None:
    """Destination.not_before is absolute: time spent before the write (a reconnect, a retry,
    the turn of a publish of the same id) shortens the expiration instead of adding to it."""
    route = _Route("eventbus.delay.1000", wire.routing_key, not_before=time.time() + 1.0)
    first = route.expiration_ms()
    time.sleep(0.2)
    later = route.expiration_ms()
    assert first is not None and later is not None
    assert 900 <= first <= 1000 and later <= first - 150
    assert _Route("", wire.routing_key).expiration_ms() is None


async def test_release_redelivers_with_the_redelivered_flag(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("release")
    await transport.publish(Destination(q, kind="queue"), [msg(q, 1, key="k", a="b")])
    sub = await subscribe(transport, queue(q))
    (first,) = await take(sub, 1)
    assert not first.redelivered
    await first.release()
    await first.release()
    await first.ack()  # already settled: a no-op
    (again,) = await take(sub, 1)
    assert again.redelivered
    assert (again.message.id, again.message.key, again.message.headers) == ("m1", "k", {"a": "b"})


async def test_unsettled_is_redelivered_after_close_and_late_settling_is_harmless(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("close")
    await transport.publish(Destination(q, kind="queue"), [msg(q, i) for i in range(3)])
    sub = await subscribe(transport, queue(q))
    first, second, third = await take(sub, 3)
    await first.ack()
    await sub.stop()
    await second.ack()  # still possible after stop
    await sub.close()
    await sub.close()
    await third.ack()  # after close: a no-op, never an exception
    again = await subscribe(transport, queue(q))
    (redelivered,) = await take(again, 1)
    assert redelivered.message.id == "m2"
    assert redelivered.redelivered
    assert await nothing_more(again)


async def test_stop_gives_back_what_was_prefetched(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport("prefetch=5")  # the broker pushes 5 ...
    q = name("stop")
    await transport.publish(Destination(q, kind="queue"), [msg(q, i) for i in range(5)])
    slow = await subscribe(transport, queue(q, prefetch=1))  # ... one is handed out
    (held,) = await take(slow, 1)  # four more sit in its buffer
    assert await nothing_more(slow, quiet=0.5), "never more than spec.prefetch handed out"
    await slow.stop()
    other = await subscribe(transport, queue(q))
    assert sorted(d.message.id for d in await take(other, 4)) == ["m1", "m2", "m3", "m4"]
    await held.ack()


async def test_depth(make_transport: Make, name: Callable[[str], str]) -> None:
    transport = await make_transport()
    q = name("depth")
    assert await transport.depth(q, "queue") is None
    await transport.publish(Destination(q, kind="queue"), [msg(q, i) for i in range(3)])
    assert await transport.depth(q, "queue") == 3
    assert await transport.depth(q, "topic") is None


async def test_broadcast_subscriptions_each_get_everything(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    topic = name("broadcast")
    one = await subscribe(transport, group(topic, None))
    two = await subscribe(transport, group(topic, None))
    await transport.publish(Destination(topic), [msg(topic, i) for i in range(3)])
    for sub in (one, two):
        assert [d.message.id for d in await take(sub, 3)] == ["m0", "m1", "m2"]
    await one.close()
    await two.close()
    with pytest.raises(UnroutableError):
        await transport.publish(Destination(topic), [msg(topic, 9)])


async def test_foreign_message_without_id_or_cloudevents(
    make_transport: Make, name: Callable[[str], str], amqp_url: str, subscribe: Subscribe
) -> None:
    transport = await make_transport()
    topic = name("foreign")
    sub = await subscribe(transport, group(topic, "g"))
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        for _ in range(2):
            await channel.basic_publish(
                b'{"x": 1}',
                exchange=topic,
                routing_key="customer-7",
                properties=Basic.Properties(
                    headers={"raw": bytearray(b"\xff"), "n": 3, "nested": {"a": [1]}}
                ),
            )
    finally:
        await connection.close()
    # (aiormq always sets a message_id; ids derived for messages without one: test_wire.py)
    first, second = await take(sub, 2)
    assert first.message.id and first.message.id != second.message.id
    assert first.message.key == "customer-7"
    assert first.message.headers["raw"] == "\ufffd"
    assert first.message.headers["n"] == "3"
    assert first.message.body == b'{"x": 1}'


async def test_quorum_group_round_trip(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport("queue_type=quorum&prefetch=100")
    topic = name("quorum")
    sub = await subscribe(transport, group(topic, "g", prefetch=20))
    await transport.publish(Destination(topic), [msg(topic, i, key="k") for i in range(20)])
    got = await take(sub, 20)
    assert [d.message.id for d in got] == [f"m{i}" for i in range(20)]
    await got[0].release()
    (again,) = await take(sub, 1)
    assert again.message.id == "m0"
    assert "x-delivery-count" not in again.message.headers


async def test_queue_type_mismatch_is_a_configuration_error(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    classic = await make_transport()
    quorum = await make_transport("queue_type=quorum")
    q = name("mismatch")
    await classic.publish(Destination(q, kind="queue"), [msg(q, 1)])
    with pytest.raises(ConfigurationError, match="queue_type"):
        await subscribe(quorum, queue(q))
    with pytest.raises(ConfigurationError):
        await quorum.publish(Destination(q, kind="queue"), [msg(q, 2)])
    # The failure did not poison the transport.
    other = name("fine")
    await quorum.publish(Destination(other, kind="queue"), [msg(other, 1)])


async def test_too_large_message_is_refused_before_sending(
    make_transport: Make, name: Callable[[str], str]
) -> None:
    transport = await make_transport("max_message_size=1000")
    q = name("large")
    big = Message(id="big", topic=q, body=b"x" * 1001)
    with pytest.raises(MessageTooLargeError):
        await transport.publish(Destination(q, kind="queue"), [big])
    assert transport.capabilities.max_message_size == 1000


async def test_default_max_message_size_is_the_brokers(make_transport: Make) -> None:
    transport = await make_transport()
    assert transport.capabilities.max_message_size == 128 * 1024 * 1024


async def test_spi_version_and_capabilities(make_transport: Make) -> None:
    transport = await make_transport()
    assert RabbitMQTransport.spi_version == transport.spi_version == 2
    assert transport.capabilities.unbound_topic == "refuse"  # see test_unroutable_publish_raises
    assert transport.capabilities.native == ("queue",)
    assert transport.capabilities.durable and transport.capabilities.redelivered_flag


async def test_connect_to_unreachable_broker_names_the_address() -> None:
    transport = RabbitMQTransport("amqp://guest:guest@127.0.0.1:1/?connect_timeout=1")
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1:1\b"):
        await transport.connect()
    await transport.close()


async def test_bad_credentials_fail_at_once(amqp_url: str) -> None:
    url = amqp_url.replace("guest:guest@", "guest:s3cr3t-wrong@")
    transport = RabbitMQTransport(url)
    start = time.monotonic()
    with pytest.raises(AuthenticationError, match="access refused") as caught:
        await transport.connect()
    assert time.monotonic() - start < 10, "no retrying what waiting cannot fix"
    assert isinstance(caught.value, PermissionError)
    assert "s3cr3t-wrong" not in str(caught.value), "the password stays secret"
    await transport.close()


async def test_an_unknown_vhost_is_an_authorization_error(amqp_url: str) -> None:
    base = amqp_url.split("?")[0].rstrip("/")
    transport = RabbitMQTransport(f"{base}/no-such-vhost-{time.time_ns()}")
    start = time.monotonic()
    with pytest.raises(AuthorizationError, match="vhost"):
        await transport.connect()
    assert time.monotonic() - start < 10
    await transport.close()


def test_a_refused_channel_operation_is_an_authorization_error() -> None:
    refused = aiormq.exceptions.ChannelAccessRefused("ACCESS_REFUSED - no write access")
    error = translate(refused, address="127.0.0.1:5672", what="publish to 'x'")
    assert isinstance(error, AuthorizationError) and isinstance(error, PermissionError)
    assert "ACCESS_REFUSED" in str(error)


async def test_partitions_spread_keys_over_subscribers_and_keep_order(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    """Two subscribers of a partitioned group, consumed concurrently (as the core does): the
    second one's subscribe returns once the first handed it its share of the partitions."""
    one = await make_transport("partitions=4")
    two = await make_transport("partitions=4")
    publisher = await make_transport()
    topic = name("spread")
    handled: list[tuple[int, str, int]] = []  # (subscriber, key, seq) in handling order
    done = anyio.Event()

    async def consume(n: int, consumer: Consumer) -> None:
        async for batch in consumer.sub:
            for delivery in batch:
                assert delivery.message.key is not None
                handled.append((n, delivery.message.key, int(delivery.message.body)))
                await delivery.ack()
            if len(handled) == 200:
                done.set()

    async with anyio.create_task_group() as tasks:
        first = await subscribe(one, group(topic, "g", 50))
        tasks.start_soon(consume, 0, first)
        second = await subscribe(two, group(topic, "g", 50))
        tasks.start_soon(consume, 1, second)
        messages = [msg(topic, i, key=f"key-{i % 10}") for i in range(200)]
        await publisher.publish(Destination(topic), messages)
        with anyio.fail_after(60):
            await done.wait()
        await first.stop()
        await second.stop()
    assert {n for n, _, _ in handled} == {0, 1}, "both subscribers got keys"
    per_key: dict[str, list[int]] = defaultdict(list)
    for _, key, seq in handled:
        per_key[key].append(seq)
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs) and len(seqs) == 20, f"{key}: once each, in order"


async def test_publish_declares_again_what_was_deleted_behind_its_back(
    make_transport: Make, name: Callable[[str], str], amqp_url: str, subscribe: Subscribe
) -> None:
    """Known entities skip the declaration; a publish the broker refuses for a missing
    exchange (a closed channel) forgets them, declares again and retries."""
    transport = await make_transport()
    q = name("redeclare-q")
    await transport.publish(Destination(q, kind="queue"), [msg(q, 1)])
    topic = name("redeclare-x")
    sub = await subscribe(transport, group(topic, "g"))
    await transport.publish(Destination(topic), [msg(topic, 1)])
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.exchange_delete(topic)
    finally:
        await connection.close()
    with pytest.raises(UnroutableError):  # declared again, but no longer bound to the group
        await transport.publish(Destination(topic), [msg(topic, 2)])
    (first,) = await take(sub, 1)
    assert first.message.id == "m1"
    await first.ack()
    assert await transport.depth(q, "queue") == 1


async def test_concurrent_publishes_of_one_id_are_all_confirmed(
    make_transport: Make, name: Callable[[str], str]
) -> None:
    transport = await make_transport()
    q = name("same-id")
    to = Destination(q, kind="queue")
    await transport.publish(to, [msg(q, 0)])
    same = msg(q, 1)
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(transport.publish, to, [same])
    assert await transport.depth(q, "queue") == 6


async def test_opening_a_channel_on_a_closed_connection_is_a_lost_connection(
    amqp_url: str,
) -> None:
    # aiormq says so with a bare RuntimeError; the adapter's callers retry lost connections
    # (or report the broker unavailable), so it must come out as one.
    conn = await aiormq.connect(amqp_url)
    channel = await open_channel(conn, publisher_confirms=False)
    assert not channel.is_closed
    await conn.close()
    with pytest.raises(aiormq.exceptions.AMQPConnectionError) as caught:
        await open_channel(conn, publisher_confirms=False)
    assert is_connection_lost(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_refusals_are_not_lost_connections() -> None:
    """Restoring a subscription and publishing retry lost connections; a refusal they must
    raise (AuthenticationError and AuthorizationError are OSErrors through PermissionError)."""
    assert not is_connection_lost(AuthenticationError("refused"))
    assert not is_connection_lost(AuthorizationError("refused"))
    assert is_connection_lost(ConnectionResetError())


async def test_a_group_made_by_0_1_keeps_its_consistent_hash_exchange_with_a_warning(
    make_transport: Make,
    name: Callable[[str], str],
    subscribe: Subscribe,
    amqp_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """0.1 made partitioned groups with an x-consistent-hash exchange; its workers may still
    run beside 0.2 during a deploy, so 0.2 uses it (binding key = weight) and says why it should
    be moved, instead of failing on the type."""
    topic = name("legacy-hub")
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.exchange_declare(
            f"{topic}.g", exchange_type="x-consistent-hash", durable=True
        )
    finally:
        await connection.close()
    worker = await make_transport("partitions=3")
    sub = await subscribe(worker, group(topic, "g", 50))
    assert any("x-consistent-hash" in r.getMessage() for r in caplog.records), caplog.text
    await worker.publish(Destination(topic), [msg(topic, i, key=f"k{i}") for i in range(30)])
    delivered = await take(sub, 30)
    assert sorted(int(d.message.body) for d in delivered) == list(range(30))


async def test_the_partition_of_a_key_does_not_depend_on_binding_order(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe, amqp_url: str
) -> None:
    """RabbitMQ rebinds a hashing exchange's queues on restart in an order of its own
    (test_reliability.py restarts it for real). Simulated: queue 0 is unbound and bound again,
    so it is last in binding order now; every key must still map to the same queue."""
    worker = await make_transport("partitions=4")
    topic = name("bind-order")
    consumer = await subscribe(worker, group(topic, "g"))
    await consumer.sub.stop()
    await consumer.sub.close()  # the group exists; nothing consumes it now
    keys = [f"key-{i}" for i in range(40)]

    async def publish_and_locate() -> dict[str, set[int]]:
        await worker.publish(Destination(topic), [msg(topic, i, key=k) for i, k in enumerate(keys)])
        return await drain_partitions(amqp_url, topic, "g", 4)

    before = await publish_and_locate()
    assert set(before) == set(keys) and len(set().union(*before.values())) == 4
    listed = (
        await anyio.run_process(
            ["rabbitmqctl", "-q", "list_bindings", "source_name", "destination_name", "routing_key"]
        )
    ).stdout.decode()
    (binding_key,) = {
        line.split("\t")[2]
        for line in listed.splitlines()
        if line.startswith(f"{topic}.g\t{topic}.g.0\t")
    }
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.queue_unbind(f"{topic}.g.0", f"{topic}.g", routing_key=binding_key)
        await channel.queue_bind(f"{topic}.g.0", f"{topic}.g", routing_key=binding_key)
    finally:
        await connection.close()
    after = await publish_and_locate()
    assert after == before
