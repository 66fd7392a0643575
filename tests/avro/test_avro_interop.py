"""Avro interop on real brokers, with the real registry: records written by the official
Confluent client (``confluent-kafka``'s ``AvroSerializer``) are read by an eventbus handler,
and records eventbus writes are read by the Confluent ``AvroDeserializer``; on RabbitMQ, a v1
producer and a v2 consumer (and the other way round) over one queue."""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import pytest
from confluent_kafka import Consumer, Producer  # type: ignore[import-untyped]
from confluent_kafka.schema_registry import SchemaRegistryClient  # type: ignore[import-untyped]
from confluent_kafka.schema_registry.avro import (  # type: ignore[import-untyped]
    AvroDeserializer,
    AvroSerializer,
)
from confluent_kafka.serialization import (  # type: ignore[import-untyped]
    MessageField,
    SerializationContext,
)
from pydantic import BaseModel

from eventbus import EventBus, Message
from eventbus import headers as h
from eventbus.avro import AVRO, AvroCodec, SchemaRegistry
from eventbus.testing.conformance import wait_for

pytestmark = pytest.mark.kafka

ORDER_SCHEMA = {
    "type": "record",
    "name": "Order",
    "namespace": "com.example.shop",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}


class Order(BaseModel):
    id: str
    amount: float
    note: str | None = None


class OrderV2(BaseModel):
    id: str
    amount: float
    note: str | None = None
    currency: str = "EUR"


def _bootstrap(kafka_url: str) -> str:
    return kafka_url.removeprefix("kafka://").split("?")[0]


async def test_records_from_the_confluent_serializer_reach_an_eventbus_handler(
    kafka_url: str, registry_url: str
) -> None:
    topic = f"interop-in-{uuid.uuid4().hex[:8]}"
    client = SchemaRegistryClient({"url": registry_url})
    serialize = AvroSerializer(client, json.dumps(ORDER_SCHEMA))
    sent = [
        {"id": f"o{i}", "amount": i + 0.5, "note": None if i % 2 else f"n{i}"} for i in range(20)
    ]

    def produce() -> None:
        producer = Producer({"bootstrap.servers": _bootstrap(kafka_url)})
        for record in sent:
            value = serialize(record, SerializationContext(topic, MessageField.VALUE))
            producer.produce(topic, value=value, key=record["id"].encode())
        assert producer.flush(30) == 0

    bus = EventBus(kafka_url, codec=AvroCodec(SchemaRegistry(registry_url)))
    got: list[Order] = []

    @bus.subscribe(topic, group="eventbus-reader")
    async def handle(order: Order) -> None:
        got.append(order)

    async with bus:
        await anyio.to_thread.run_sync(produce)
        await wait_for(lambda: len(got) == len(sent), what="every Confluent-written record")
    assert sorted(got, key=lambda o: int(o.id[1:])) == [Order(**record) for record in sent]
    await bus.codec.registry.aclose()  # type: ignore[union-attr]


async def test_records_eventbus_writes_are_read_by_the_confluent_deserializer(
    kafka_url: str, registry_url: str
) -> None:
    topic = f"interop-out-{uuid.uuid4().hex[:8]}"
    registry = SchemaRegistry(registry_url)
    bus = EventBus(
        kafka_url, codec=AvroCodec(registry, auto_register=True, namespace="com.example.shop")
    )
    sent = [Order(id=f"o{i}", amount=i * 1.5, note="x" if i % 3 else None) for i in range(20)]
    async with bus.publisher():
        for order in sent:
            await bus.publish(topic, order, key=order.id)

    headers: list[dict[str, bytes]] = []

    def consume() -> list[dict[str, Any]]:
        client = SchemaRegistryClient({"url": registry_url})
        deserialize = AvroDeserializer(client)
        consumer = Consumer(
            {
                "bootstrap.servers": _bootstrap(kafka_url),
                "group.id": f"confluent-{topic}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([topic])
        read: list[dict[str, Any]] = []
        try:
            for _ in range(600):
                if len(read) == len(sent):
                    break
                message = consumer.poll(0.1)
                if message is None or message.error():
                    continue
                ctx = SerializationContext(topic, MessageField.VALUE)
                read.append(deserialize(message.value(), ctx))
                headers.append(dict(message.headers() or ()))
        finally:
            consumer.close()
        return read

    read = await anyio.to_thread.run_sync(consume)
    assert sorted(read, key=lambda r: int(r["id"][1:])) == [o.model_dump() for o in sent]
    # CloudEvents in Kafka's binary mode: the schema's address in ce_dataschema.
    schema_url = headers[0]["ce_dataschema"].decode()
    assert schema_url.startswith(f"{registry.url}/schemas/ids/")
    assert headers[0]["content-type"] == b"application/avro"
    await registry.aclose()


@pytest.mark.amqp
async def test_a_v1_producer_and_a_v2_consumer_and_back_over_rabbitmq(
    amqp_url: str, registry_url: str
) -> None:
    queue = f"interop-{uuid.uuid4().hex[:8]}"
    registry = SchemaRegistry(registry_url)
    codec = AvroCodec(registry, auto_register=True, namespace="com.example.shop")
    bus = EventBus(amqp_url, codec=codec)
    as_v2: list[OrderV2] = []
    as_v1: list[Order] = []

    seen: list[Message] = []

    @bus.consume(queue)
    async def v2(order: OrderV2, message: Message) -> None:
        as_v2.append(order)
        seen.append(message)

    @bus.consume(f"{queue}.back")
    async def v1(order: Order) -> None:
        as_v1.append(order)

    async with bus:
        await bus.send(queue, Order(id="from-v1", amount=1.0))
        await bus.send(f"{queue}.back", OrderV2(id="from-v2", amount=2.0, currency="USD"))
        await wait_for(lambda: as_v2 and as_v1, what="both records")
    assert as_v2 == [OrderV2(id="from-v1", amount=1.0, currency="EUR")]
    assert seen[0].headers[h.DATASCHEMA].startswith(f"{registry.url}/schemas/ids/")
    assert seen[0].content_type == AVRO
    assert as_v1 == [Order(id="from-v2", amount=2.0)]
    await registry.aclose()
