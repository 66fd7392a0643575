"""What the two versions of the shipping service share: the bus settings and the demo producer.

The registry comes from ``EVENTBUS_SCHEMA_REGISTRY`` (``scripts/brokers env`` prints the local
one as ``EVENTBUS_TEST_REGISTRY``), the broker from ``EVENTBUS_URL``.
"""

from __future__ import annotations

import itertools
import os

import anyio
from pydantic import BaseModel

from eventbus import EventBus
from eventbus.avro import AvroCodec, SchemaRegistry

TOPIC = os.environ.get("SHIPMENTS_TOPIC", "shipments")


def shipping_bus() -> EventBus:
    registry = SchemaRegistry(
        os.environ.get("EVENTBUS_SCHEMA_REGISTRY", "http://127.0.0.1:8081/apis/ccompat/v7")
    )
    # auto_register keeps the demo to one command; in production register from CI instead,
    # after `eventbus schema check` passed: `eventbus schema register examples...:bus`.
    codec = AvroCodec(registry, auto_register=True, namespace="example.shipping")
    bus = EventBus(codec=codec, graceful_timeout=5.0)

    @bus.on_shutdown
    async def close_registry() -> None:
        await registry.aclose()

    return bus


def say(who: str, text: str) -> None:
    print(f"{who:<3}| {text}", flush=True)


async def produce(bus: EventBus, version: str, make: type[BaseModel], **fields: object) -> None:
    """Publish a shipment every half second (``EVENTBUS_DEMO_COUNT`` of them, else forever)."""
    count = int(os.environ.get("EVENTBUS_DEMO_COUNT", "0")) or None
    for n in itertools.islice(itertools.count(1), count):
        shipment = make(id=f"{version}-{n}", weight_kg=1.5 * n, **fields)
        await bus.publish(TOPIC, shipment, key=shipment.id)  # type: ignore[attr-defined]
        say(version, f"sent {shipment!r}")
        await anyio.sleep(0.5)
