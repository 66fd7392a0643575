"""RabbitMQ plumbing shared by every contender: declarations, pre-filling, publishing settings.

Every contender's queues and exchanges are declared here the way eventbus declares them
(durable classic queues, durable fanout exchange for a topic, one queue per group bound to it)
and filled here with the same messages: persistent, with the AMQP properties and
``cloudEvents_*`` headers an eventbus producer writes (DESIGN 4), through a confirming channel.
Every publisher of every contender uses publisher confirms, persistent messages and
``mandatory=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika

from benchmarks.harness import Settings

__all__ = ["connection", "declared", "fill", "filled_queue", "message"]


@contextlib.asynccontextmanager
async def connection(settings: Settings) -> AsyncIterator[Any]:
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        yield conn
    finally:
        await conn.close()


def message(body: bytes, *, key: str | None = None, content_type: str = "") -> aio_pika.Message:
    """A persistent message carrying what an eventbus producer would send."""
    now = datetime.now(UTC)
    headers: dict[str, Any] = {
        "cloudEvents_specversion": "1.0",
        "cloudEvents_source": "eventbus",
        "cloudEvents_time": now.isoformat(),
    }
    if key is not None:
        headers["eventbus-key"] = key
    return aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=uuid.uuid4().hex,
        timestamp=now,
        content_type=content_type or "application/octet-stream",
        headers=headers,
    )


@contextlib.asynccontextmanager
async def declared(
    settings: Settings,
    *,
    queues: Sequence[str] = (),
    topic: str | None = None,
    also_delete: Sequence[str] = (),
) -> AsyncIterator[None]:
    """Durable ``queues`` (bound to the fanout exchange ``topic`` when given); deleted
    afterwards with ``also_delete`` (queues a framework declared for itself)."""
    async with connection(settings) as conn:
        channel = await conn.channel()
        if topic is not None:
            exchange = await channel.declare_exchange(
                topic, aio_pika.ExchangeType.FANOUT, durable=True
            )
        for name in queues:
            queue = await channel.declare_queue(name, durable=True)
            if topic is not None:
                await queue.bind(exchange)
        try:
            yield
        finally:
            cleanup = await conn.channel()
            for name in [*queues, *also_delete]:
                try:
                    await cleanup.queue_delete(name)
                except Exception:
                    cleanup = await conn.channel()  # a failed delete closes the channel
            if topic is not None:
                with contextlib.suppress(Exception):
                    await cleanup.exchange_delete(topic)


async def fill(
    settings: Settings,
    queue: str,
    bodies: Sequence[bytes],
    *,
    keys: Sequence[str] | None = None,
    content_type: str = "",
) -> None:
    """Publish ``bodies`` to ``queue`` with confirms, 1 000 in flight at a time."""
    async with connection(settings) as conn:
        channel = await conn.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        for start in range(0, len(bodies), 1_000):
            await asyncio.gather(
                *(
                    exchange.publish(
                        message(b, key=keys[i] if keys else None, content_type=content_type),
                        routing_key=queue,
                        mandatory=True,
                    )
                    for i, b in enumerate(bodies[start : start + 1_000], start)
                )
            )


@contextlib.asynccontextmanager
async def filled_queue(
    settings: Settings,
    queue: str,
    count: int,
    *,
    keys: int = 0,
    also_delete: Sequence[str] = (),
) -> AsyncIterator[None]:
    """A fresh durable queue holding ``count`` persistent messages, deleted afterwards."""
    payload = os.urandom(settings.message_size)
    key_list = [f"key-{i % keys}" for i in range(count)] if keys else None
    async with declared(settings, queues=[queue], also_delete=also_delete):
        await fill(settings, queue, [payload] * count, keys=key_list)
        yield
