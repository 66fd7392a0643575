"""An app for the ``eventbus status`` tests: two groups of one topic and a queue; the broker
URL and the topic name come from the environment (each test uses fresh ones)."""

import os

from eventbus import EventBus

bus = EventBus(os.environ.get("STATUS_URL", "memory://status-app"))
TOPIC = os.environ.get("STATUS_TOPIC", "orders")


@bus.subscribe(TOPIC, group="billing")
async def bill(order: dict) -> None:  # type: ignore[type-arg]
    pass


@bus.subscribe(TOPIC, group="shipping")
async def ship(order: dict) -> None:  # type: ignore[type-arg]
    pass


@bus.consume(f"{TOPIC}-jobs")
async def job(order: dict) -> None:  # type: ignore[type-arg]
    pass


@bus.subscribe(TOPIC)
async def everyone(order: dict) -> None:  # type: ignore[type-arg]
    pass
