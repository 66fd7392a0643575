"""The dead-lettering worker of the cross-version DLQ tests, run by an eventbus 0.1 worker::

    DLQX_TOPIC=t DLQX_GROUP=g DLQX_READY_FILE=/tmp/ready \\
        python -m eventbus run upgrade_dlq_app:bus --url kafka://127.0.0.1:9092

It uses only the API both releases have (see `upgrade_app`) and imports nothing from the test
suite. Every message it gets is dead-lettered: an `Item` with ``reject`` raises `Reject` (one
attempt), any other raises `PlannedFailure` on each of its ``MAX_ATTEMPTS`` in-process attempts.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
from pydantic import BaseModel

from eventbus import Delivery, EventBus, Reject, RetryPolicy

__all__ = ["MAX_ATTEMPTS", "Item", "PlannedFailure", "build_bus"]

MAX_ATTEMPTS = 2


class Item(BaseModel):
    n: int
    text: str
    reject: bool = False


class PlannedFailure(Exception):
    """Raised by design: this worker fails every message it does not reject."""


def build_bus(env: dict[str, str] | os._Environ[str] = os.environ) -> EventBus:
    ready_file = env.get("DLQX_READY_FILE")
    bus = EventBus(graceful_timeout=5.0)  # the URL comes from `eventbus run --url`

    @bus.subscribe(
        env["DLQX_TOPIC"],
        group=env["DLQX_GROUP"],
        retry=RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_delay=0.01, max_delay=0.05),
    )
    async def fail(item: Item, delivery: Delivery) -> None:
        if item.reject:
            raise Reject(f"item {item.n} rejected by design")
        raise PlannedFailure(f"item {item.n} fails attempt {delivery.attempt} by design")

    if bystander := env.get("DLQX_BYSTANDER"):

        @bus.subscribe(env["DLQX_TOPIC"], group=bystander)
        async def accept(item: Item, delivery: Delivery) -> None:
            pass  # another group of the topic: it must never see a replay

    @bus.on_startup
    async def ready() -> None:
        if ready_file:  # every subscription is live (group joined): the test waits for this
            await anyio.Path(ready_file).write_text(str(os.getpid()))

    return bus


_bus: EventBus | None = None


def __getattr__(name: str) -> Any:
    # Built from the environment on first access (`eventbus run` asks for ``bus``).
    global _bus
    if name == "bus":
        if _bus is None:
            _bus = build_bus()
        return _bus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
