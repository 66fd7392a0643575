"""A dead-letter or retry publish that Kafka refuses for a while, through the whole bus (DESIGN 8,
"Dead letters always get out"): only the publish is tried again, never the handler, and the
source record is committed once the republish went through.

The group's dead-letter (or retry) topic is created beforehand as a compacted topic, which
refuses records without a key (INVALID_RECORD) and the message has none, so every publish to it
fails at once until the test turns it back into a ``delete`` topic. (``min.insync.replicas``
above the replica count does not block writes: Kafka caps it at the replication factor.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import pydantic
import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import (  # type: ignore[import-untyped]
    ConfigResource,
    ConfigResourceType,
)
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]
from eventbus_kafka.url import parse_url
from kafka_helpers import wait_until

from eventbus import Delivery, EventBus, RetryPolicy
from eventbus import headers as h

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

FAILURES = 3
"""Publishes refused before the test unblocks the topic (backoff 0.2 s, 0.4 s, ...)."""


class Order(pydantic.BaseModel):
    id: int


@pytest.fixture
async def admin(kafka_url: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=parse_url(kafka_url).address)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def accept_keyless_records(admin: AIOKafkaAdminClient, topic: str) -> None:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"cleanup.policy": "delete"})
    [response] = await admin.alter_configs([resource])
    assert all(error == 0 for error, *_ in response.resources), response


async def partitions_of(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    [described] = await admin.describe_topics([topic])
    assert described["error_code"] == 0, described
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def records_of(
    admin: AIOKafkaAdminClient, address: str, topic: str
) -> list[tuple[str, dict[str, str]]]:
    """Every record of ``topic`` as (ce_id, headers), read from the start to the end offsets."""
    partitions = await partitions_of(admin, topic)
    reader = AIOKafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await reader.end_offsets(partitions)
        found: list[tuple[str, dict[str, str]]] = []
        with anyio.fail_after(30):
            while [tp for tp in partitions if await reader.position(tp) < ends[tp]]:
                batches = await reader.getmany(timeout_ms=500)
                for batch in batches.values():
                    for record in batch:
                        headers = {k: v.decode() for k, v in record.headers}
                        found.append((headers.get("ce_id", ""), headers))
        return found
    finally:
        await reader.stop()


async def end_offsets(
    admin: AIOKafkaAdminClient, address: str, topic: str
) -> dict[TopicPartition, int]:
    partitions = await partitions_of(admin, topic)
    reader = AIOKafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    await reader.start()
    try:
        return dict(await reader.end_offsets(partitions))
    finally:
        await reader.stop()


async def committed_offset(admin: AIOKafkaAdminClient, group: str, tp: TopicPartition) -> int:
    found = await admin.list_consumer_group_offsets(group, partitions=[tp])
    meta = found.get(tp)
    return -1 if meta is None else int(meta.offset)


@pytest.mark.parametrize("via_broker", [False, True], ids=["dead-letter", "retry"])
async def test_a_refused_republish_is_retried_without_rerunning_the_handler(
    kafka_url: str,
    name: Callable[[str], str],
    admin: AIOKafkaAdminClient,
    via_broker: bool,
) -> None:
    topic = name("republish")
    group = f"{topic}-g"
    dlq, retry = f"{topic}.{group}.dlq", f"{topic}.{group}.retry"
    blocked = retry if via_broker else dlq
    created = await admin.create_topics(
        [NewTopic(blocked, 1, 1, topic_configs={"cleanup.policy": "compact"})]
    )
    assert [entry[1] for entry in created.topic_errors] == [0], created
    address = parse_url(kafka_url).address
    bus = EventBus(f"{kafka_url}?commit_interval=0.2")
    attempts: list[int] = []
    policy = RetryPolicy(max_attempts=2 if via_broker else 1, via_broker=via_broker)

    @bus.subscribe(topic, group=group, retry=policy)
    async def handle(order: Order, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise ValueError(f"order {order.id} always fails")

    async with bus:
        stats = bus.subscribers[0].stats
        await bus.publish(topic, Order(id=1), message_id="m-1")  # no key: refused when compacted
        await wait_until(lambda: stats.republish_failures >= FAILURES, within=60)
        assert attempts == [1], "the handler waits for the publish, it does not run again"
        assert stats.dead_lettered == 0
        await accept_keyless_records(admin, blocked)
        await wait_until(lambda: stats.dead_lettered == 1, within=60)
        await anyio.sleep(2.0)  # anything duplicated would be handled or dead-lettered by now

        assert attempts == ([1, 2] if via_broker else [1]), "each attempt ran exactly once"
        assert stats.republish_failures >= FAILURES
        assert stats.dead_lettered == 1
        letters = await records_of(admin, address, dlq)
        assert [i for i, _ in letters] == ["m-1"], "exactly one dead letter"
        letter = letters[0][1]
        assert letter[h.DLQ_REASON] == "retries-exhausted"
        assert letter[h.ATTEMPTS] == str(len(attempts))
        assert letter[h.ORIGINAL_TOPIC] == topic and letter[h.ORIGINAL_GROUP] == group
        if via_broker:
            retried = await records_of(admin, address, retry)
            assert [i for i, _ in retried] == ["m-1"], "exactly one redelivery"
            assert retried[0][1][h.ATTEMPT] == "2"

        # The source record is committed past, on the main topic and the retry topic.
        source = await records_of(admin, address, topic)
        assert [i for i, _ in source] == ["m-1"]
        for t in (topic, retry) if via_broker else (topic,):
            for tp, end in (await end_offsets(admin, address, t)).items():
                if end:
                    await wait_until_committed(admin, group, tp, end)


async def wait_until_committed(
    admin: AIOKafkaAdminClient, group: str, tp: TopicPartition, end: int
) -> None:
    """Wait until ``group`` committed ``tp`` up to ``end`` (everything before it settled)."""
    with anyio.fail_after(30):
        while True:
            if await committed_offset(admin, group, tp) >= end:
                return
            await anyio.sleep(0.1)


async def test_a_dead_letter_still_refused_at_shutdown_goes_to_the_next_owner(
    kafka_url: str, name: Callable[[str], str], admin: AIOKafkaAdminClient
) -> None:
    """Stopping while the dead letter cannot get out leaves the message uncommitted (never
    acked without its dead letter); the next process of the group handles it again and its
    dead letter goes out once, when the topic accepts it."""
    topic = name("republish-stop")
    group = f"{topic}-g"
    dlq = f"{topic}.{group}.dlq"
    created = await admin.create_topics(
        [NewTopic(dlq, 1, 1, topic_configs={"cleanup.policy": "compact"})]
    )
    assert [entry[1] for entry in created.topic_errors] == [0], created
    address = parse_url(kafka_url).address
    url = f"{kafka_url}?commit_interval=0.2"
    handled: list[tuple[str, str, int]] = []

    def worker(who: str) -> EventBus:
        bus = EventBus(url, graceful_timeout=10.0)

        @bus.subscribe(topic, group=group, retry=RetryPolicy(max_attempts=1))
        async def handle(order: Order, delivery: Delivery) -> None:
            handled.append((who, delivery.message.id, delivery.attempt))
            raise ValueError(f"order {order.id} always fails")

        return bus

    first = worker("first")
    async with first:
        stats = first.subscribers[0].stats
        await first.publish(topic, Order(id=1), message_id="m-1")
        await wait_until(lambda: stats.republish_failures >= FAILURES, within=60)
    assert handled == [("first", "m-1", 1)]
    assert stats.dead_lettered == 0
    ends = await end_offsets(admin, address, topic)
    [(tp, end)] = [(tp, end) for tp, end in ends.items() if end]
    assert await committed_offset(admin, group, tp) < end, "not committed without its dead letter"
    assert await records_of(admin, address, dlq) == []

    await accept_keyless_records(admin, dlq)
    second = worker("second")
    async with second:
        stats = second.subscribers[0].stats
        await wait_until(lambda: stats.dead_lettered == 1, within=60)
        await wait_until_committed(admin, group, tp, end)
        await anyio.sleep(1.0)
    assert handled == [("first", "m-1", 1), ("second", "m-1", 1)]
    assert stats.republish_failures == 0
    letters = await records_of(admin, address, dlq)
    assert [i for i, _ in letters] == ["m-1"], "exactly one dead letter"
    assert letters[0][1][h.DLQ_REASON] == "retries-exhausted"
