"""Each broker endpoint is real: a round trip through the plain client library.

These use the drivers directly, not eventbus, so a failure here means the environment (see
scripts/brokers and tests/conftest.py), not the framework.
"""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pamqp.commands import Basic

TIMEOUT = 60.0


def bootstrap_servers(kafka_url: str) -> str:
    """``kafka://h1:9092,h2:9092`` -> ``h1:9092,h2:9092`` (a bare host list passes through)."""
    return urlsplit(kafka_url).netloc if "://" in kafka_url else kafka_url


@pytest.mark.kafka
async def test_kafka_idempotent_produce_then_consume(kafka_url: str) -> None:
    topic = f"smoke-{uuid.uuid4().hex}"
    servers = bootstrap_servers(kafka_url)
    async with asyncio.timeout(TIMEOUT):
        producer = AIOKafkaProducer(bootstrap_servers=servers, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                topic, b"hello kafka", key=b"order-42", headers=[("tenant", b"a")]
            )
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=servers,
            group_id=f"smoke-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            record = await consumer.getone()
        finally:
            await consumer.stop()

    assert (record.topic, record.partition, record.offset) == (topic, sent.partition, sent.offset)
    assert record.key == b"order-42"
    assert record.value == b"hello kafka"
    assert list(record.headers) == [("tenant", b"a")]


@pytest.mark.amqp
async def test_amqp_confirmed_publish_then_get(amqp_url: str) -> None:
    body = f"hello rabbit {uuid.uuid4()}".encode()
    async with asyncio.timeout(TIMEOUT):
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue(f"smoke-{uuid.uuid4().hex}", exclusive=True)
            confirmation = await channel.default_exchange.publish(
                aio_pika.Message(body, message_id="m-1", headers={"tenant": "a"}),
                routing_key=queue.name,
            )
            message = await queue.get(timeout=10, fail=True)
            assert message is not None
            await message.ack()

    assert isinstance(confirmation, Basic.Ack)  # the broker confirmed, not nacked
    assert message.body == body
    assert message.message_id == "m-1"
    assert message.headers == {"tenant": "a"}


@pytest.mark.amqp
@pytest.mark.parametrize("kind", ["x-modulus-hash", "x-consistent-hash"])
async def test_amqp_partitioning_exchange_plugins(amqp_url: str, kind: str) -> None:
    # x-modulus-hash: partitioned groups; x-consistent-hash: the ones eventbus 0.1 made.
    async with asyncio.timeout(TIMEOUT):
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                f"smoke-{uuid.uuid4().hex}", kind, auto_delete=True
            )
            await exchange.delete()


@pytest.mark.redis
async def test_redis_set_get(redis_url: str) -> None:
    key, value = f"smoke:{uuid.uuid4().hex}", uuid.uuid4().hex.encode()
    async with asyncio.timeout(TIMEOUT):
        client = aioredis.from_url(redis_url)
        try:
            assert await client.set(key, value, ex=60) is True
            assert await client.get(key) == value
            assert await client.delete(key) == 1
        finally:
            await client.aclose()


@pytest.mark.postgres
async def test_postgres_select_one(postgres_url: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        connection = await asyncpg.connect(postgres_url)
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()
