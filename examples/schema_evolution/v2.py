"""Version 2 of the shipping service: a shipment also names its carrier.

    EVENTBUS_URL=kafka://127.0.0.1:9092 uv run eventbus run examples.schema_evolution.v2:bus

The new field has a default, which is what keeps the change compatible both ways: v2 reads a
v1 record with ``carrier="unknown"``, v1 reads a v2 record without it. Check it before you
deploy: ``eventbus schema check examples.schema_evolution.v2:bus --level FULL``.
"""

from __future__ import annotations

from pydantic import BaseModel

from examples.schema_evolution.common import TOPIC, produce, say, shipping_bus


class Shipment(BaseModel):
    id: str
    weight_kg: float
    carrier: str = "unknown"


bus = shipping_bus()


@bus.subscribe(TOPIC, group="shipping-v2")
async def track(shipment: Shipment) -> None:
    say("v2", f"read {shipment!r}")


@bus.on_startup
async def send_shipments() -> None:
    await produce(bus, "v2", Shipment, carrier="DHL")
