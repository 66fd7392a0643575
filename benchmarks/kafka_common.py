"""Kafka plumbing shared by every contender: topics, pre-filling, payloads, producer settings.

Every contender's topic is created here, the same way (partitions, replication factor 1), and
filled here, by the same raw producer, with the same records: a 100-byte body and the
CloudEvents headers an eventbus producer writes (DESIGN 4), so that every consumer reads
byte-identical data. Every producer of every contender is idempotent with ``acks=all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from pydantic import BaseModel

from benchmarks.harness import Settings

__all__ = [
    "PRODUCER_OPTIONS",
    "Order",
    "body",
    "delete_topics",
    "fill",
    "filled_topic",
    "json_bodies",
    "kafka_topics",
    "producer",
]

PRODUCER_OPTIONS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "max_batch_size": 256 * 1024,
}
"""Every Kafka producer of every contender: the delivery guarantee, and the per-partition batch
size the eventbus producer uses (aiokafka's default is 16 KiB), so that batching differences
are not configuration differences."""


class Order(BaseModel):
    """The model of scenario (c); its JSON is about 100 bytes."""

    order_id: int
    customer: str
    sku: str
    quantity: int
    price: float
    currency: str


def body(size: int) -> bytes:
    """The opaque payload every contender sends: ``size`` random bytes."""
    return os.urandom(size)


def json_bodies(count: int, size: int) -> list[bytes]:
    """``count`` distinct `Order`s as JSON, all exactly ``size`` bytes when the model fits
    (``customer`` pads them; order ids have 7 digits)."""
    order = Order(
        order_id=1_000_000, customer="", sku="SKU-1234-XL", quantity=3, price=19.99, currency="EUR"
    )
    pad = max(0, size - len(order.model_dump_json()))
    template = order.model_copy(update={"customer": "c" * pad}).model_dump_json()
    head, tail = template.split("1000000", 1)
    return [f"{head}{1_000_000 + i}{tail}".encode() for i in range(count)]


def ce_headers(content_type: str) -> list[tuple[str, bytes]]:
    """The headers an eventbus producer writes (CloudEvents binary mode)."""
    return [
        ("ce_id", uuid.uuid4().hex.encode()),
        ("ce_source", b"eventbus"),
        ("ce_specversion", b"1.0"),
        ("ce_time", datetime.now(UTC).isoformat(timespec="microseconds").encode()),
        ("content-type", content_type.encode()),
    ]


@contextlib.asynccontextmanager
async def producer(settings: Settings, **options: Any) -> AsyncIterator[Any]:
    p = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, **{**PRODUCER_OPTIONS, **options}
    )
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@contextlib.asynccontextmanager
async def kafka_topics(
    settings: Settings, names: Sequence[str], partitions: int | None = None
) -> AsyncIterator[None]:
    """Create ``names`` (``partitions`` each, default the settings'), delete them afterwards."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        count = partitions or settings.partitions
        await admin.create_topics([NewTopic(n, count, 1) for n in names])
        await _wait_for_leaders(settings, names, count)
        yield
    finally:
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(names))
        await admin.close()


async def delete_topics(settings: Settings, names: Sequence[str]) -> None:
    """Best effort: topics a framework created for itself (eventbus retry topics)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(names))
    finally:
        await admin.close()


async def _wait_for_leaders(settings: Settings, names: Sequence[str], partitions: int) -> None:
    async with producer(settings) as p:
        for name in names:
            for _ in range(100):
                found = await p.partitions_for(name)
                if found is not None and len(found) == partitions:
                    break
                await asyncio.sleep(0.05)


async def fill(
    settings: Settings,
    topic: str,
    bodies: Sequence[bytes],
    *,
    content_type: str = "application/octet-stream",
    keys: Sequence[str] | None = None,
) -> None:
    """Write ``bodies`` to ``topic`` (eventbus wire format), pipelined, and wait for all acks."""
    async with producer(settings, linger_ms=5) as p:
        for start in range(0, len(bodies), 5_000):
            futures = [
                await p.send(
                    topic,
                    b,
                    key=keys[i].encode() if keys else None,
                    headers=ce_headers(content_type),
                )
                for i, b in enumerate(bodies[start : start + 5_000], start)
            ]
            await asyncio.gather(*futures)


@contextlib.asynccontextmanager
async def filled_topic(
    settings: Settings,
    topic: str,
    count: int,
    *,
    payload: str = "bytes",
    partitions: int | None = None,
    keys: int = 0,
) -> AsyncIterator[None]:
    """A fresh topic holding ``count`` records, deleted afterwards."""
    size = settings.message_size
    if payload == "json":
        bodies = json_bodies(count, size)
        content_type = "application/json"
    else:
        bodies = [body(size)] * count
        content_type = "application/octet-stream"
    key_list = [f"key-{i % keys}" for i in range(count)] if keys else None
    async with kafka_topics(settings, [topic], partitions):
        await fill(settings, topic, bodies, content_type=content_type, keys=key_list)
        yield
