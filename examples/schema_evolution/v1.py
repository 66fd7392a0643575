"""Version 1 of the shipping service: a shipment has an id and a weight.

    EVENTBUS_URL=kafka://127.0.0.1:9092 uv run eventbus run examples.schema_evolution.v1:bus

Run it beside `v2` (which added ``carrier``): each reads what the other writes, through Avro's
schema resolution -- v1 skips the field it does not know (see README.md).
"""

from __future__ import annotations

from pydantic import BaseModel

from examples.schema_evolution.common import TOPIC, produce, say, shipping_bus


class Shipment(BaseModel):
    id: str
    weight_kg: float


bus = shipping_bus()


@bus.subscribe(TOPIC, group="shipping-v1")
async def track(shipment: Shipment) -> None:
    say("v1", f"read {shipment!r}")


@bus.on_startup
async def send_shipments() -> None:
    await produce(bus, "v1", Shipment)
