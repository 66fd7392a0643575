"""What foreign producers write reaches the log escaped (eventbus/loggers.py): a message whose id
holds a newline and a terminal escape, sent by a plain AMQP or Kafka producer, is dead-lettered
as undecodable, and the line that says so is one line, with the id escaped in it. Logged as an
application would: a text handler on the root logger."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import aiormq
import pydantic
import pytest
from aiokafka import AIOKafkaProducer
from pamqp.commands import Basic

from eventbus import EventBus, RetryPolicy
from eventbus.testing.conformance import wait_for

EVIL_ID = "order-1\nERROR forged: payment refused \x1b[2J"
ESCAPED_ID = "order-1\\nERROR forged: payment refused \\x1b[2J"


class Order(pydantic.BaseModel):
    id: int


@contextmanager
def text_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


async def dead_letter_one(url: str, queue: str, send: Callable[[], Awaitable[None]]) -> str:
    """Run a bus consuming ``queue``; ``send`` publishes one foreign message that is no
    `Order`; return what was logged until it was dead-lettered."""
    bus = EventBus(url)

    @bus.consume(queue, retry=RetryPolicy(max_attempts=1))
    async def handle(order: Order) -> None:
        pass

    with text_log() as out:
        async with bus:
            await send()
            stats = bus.subscribers[0].stats
            await wait_for(lambda: stats.dead_lettered == 1, within=30, what="dead-lettered")
    return out.getvalue()


def assert_escaped(logged: str) -> None:
    lines = logged.splitlines()
    about = [line for line in lines if ESCAPED_ID in line]
    assert about, logged
    assert all(line.startswith(("ERROR ", "WARNING ", "INFO ")) for line in about), about
    assert not any(line.startswith("ERROR forged") for line in lines), "a forged line"
    assert "\x1b" not in logged


@pytest.mark.amqp
async def test_a_foreign_amqp_message_id_is_escaped_in_the_log(amqp_url: str) -> None:
    queue = f"inject-{uuid.uuid4().hex[:8]}"

    async def send() -> None:
        connection = await aiormq.connect(amqp_url)
        try:
            channel = await connection.channel()
            await channel.basic_publish(
                b"not an order",
                routing_key=queue,
                properties=Basic.Properties(message_id=EVIL_ID, delivery_mode=2),
            )
        finally:
            await connection.close()

    assert_escaped(await dead_letter_one(amqp_url, queue, send))


@pytest.mark.kafka
async def test_a_foreign_kafka_message_id_is_escaped_in_the_log(kafka_url: str) -> None:
    topic = f"inject-{uuid.uuid4().hex[:8]}"

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_url.removeprefix("kafka://"))
        await producer.start()
        try:
            headers = [("ce_id", EVIL_ID.encode())]
            await producer.send_and_wait(topic, b"not an order", headers=headers)
        finally:
            await producer.stop()

    assert_escaped(await dead_letter_one(kafka_url, topic, send))
