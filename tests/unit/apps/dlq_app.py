"""Handlers whose dead-letter queues ``eventbus dlq list --app`` finds."""

from eventbus import EventBus

bus = EventBus()


@bus.subscribe("orders", group="billing")
async def bill(order: dict) -> None:  # type: ignore[type-arg]
    pass


@bus.consume("emails")
async def email(command: dict) -> None:  # type: ignore[type-arg]
    pass
