"""What encoding and decoding one message costs with the JSON codec and with the Avro codec
(docs/benchmarks.md, "Avro and JSON codec cost"). No broker; the Avro codec talks to the real
registry once per schema (``EVENTBUS_SCHEMA_REGISTRY``, else ``EVENTBUS_TEST_REGISTRY``, else
the local one of ``scripts/brokers``), then works from its caches, as in a running service.

    uv run python -m benchmarks.codec_cost
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid

from pydantic import BaseModel

from eventbus.avro import AvroCodec, SchemaRegistry
from eventbus.codecs.json import JsonCodec
from eventbus.message import Message

MESSAGES = int(os.environ.get("CODEC_COST_MESSAGES", "50000"))
ROUNDS = 3


class Line(BaseModel):
    sku: str
    quantity: int


class OrderPlaced(BaseModel):
    order_id: str
    customer: str
    amount: float
    placed_at: dt.datetime
    lines: list[Line]
    note: str | None = None


def _order(i: int) -> OrderPlaced:
    return OrderPlaced(
        order_id=f"order-{i}",
        customer="ada@example.com",
        amount=12.5 + i,
        placed_at=dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC),
        lines=[Line(sku="A-1", quantity=2), Line(sku="B-7", quantity=1)],
    )


def _message(body: bytes) -> Message:
    return Message(
        id="m",
        topic="orders",
        body=body,
        key=None,
        headers={},
        content_type=None,
        type=None,
        timestamp=dt.datetime.now(dt.UTC),
        correlation_id=None,
    )


async def main() -> None:
    url = os.environ.get("EVENTBUS_SCHEMA_REGISTRY") or os.environ.get(
        "EVENTBUS_TEST_REGISTRY", "http://127.0.0.1:8081/apis/ccompat/v7"
    )
    topic = f"codec-cost-{uuid.uuid4().hex[:8]}"
    orders = [_order(i) for i in range(MESSAGES)]
    json_codec = JsonCodec()
    async with SchemaRegistry(url) as registry:
        avro = AvroCodec(registry, auto_register=True, namespace="bench")
        await avro.decode(_message((await avro.encode(orders[0], topic)).body), OrderPlaced)
        results: dict[str, list[float]] = {}
        for _ in range(ROUNDS):
            started = time.perf_counter()
            json_bodies = [json_codec.encode(o).body for o in orders]
            results.setdefault("json encode", []).append(time.perf_counter() - started)
            started = time.perf_counter()
            for body in json_bodies:
                json_codec.decode(_message(body), OrderPlaced)
            results.setdefault("json decode", []).append(time.perf_counter() - started)
            started = time.perf_counter()
            avro_bodies = [(await avro.encode(o, topic)).body for o in orders]
            results.setdefault("avro encode", []).append(time.perf_counter() - started)
            started = time.perf_counter()
            for body in avro_bodies:
                await avro.decode(_message(body), OrderPlaced)
            results.setdefault("avro decode", []).append(time.perf_counter() - started)
    print(
        f"{MESSAGES} messages, best of {ROUNDS}; body: JSON {len(json_bodies[0])} bytes, "
        f"Avro {len(avro_bodies[0])} bytes"
    )
    for name, seconds in results.items():
        print(f"{name:<12} {min(seconds) / MESSAGES * 1e6:6.2f} us/message")


if __name__ == "__main__":
    asyncio.run(main())
