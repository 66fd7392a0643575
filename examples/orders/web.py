"""The HTTP front of the orders service: it publishes, the workers handle.

    uvicorn examples.orders.web:app            # memory:// unless EVENTBUS_URL is set
    eventbus run examples.orders.service:bus   # the workers, in their own processes

It imports the service's bus (one definition of topics and models), but its lifespan starts it
with ``bus.publisher()``: the web process never joins the ``billing`` group, so it takes no
orders away from the workers and a deploy of the web tier never rebalances them.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from eventbus import BrokerUnavailableError, UnroutableError
from examples.orders.service import OrderPlaced, bus


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with bus.publisher():
        yield


app = FastAPI(title="orders", lifespan=lifespan)


class PlaceOrder(BaseModel):
    order_id: int = Field(gt=0)
    customer: str = Field(min_length=1, max_length=100)
    amount: Decimal


class Accepted(BaseModel):
    message_id: str


@app.post("/orders", status_code=202)
async def place_order(order: PlaceOrder) -> Accepted:
    """Accepted once the broker confirmed the event: billing happens after the response."""
    try:
        message_id = await bus.publish(
            "orders", OrderPlaced(**order.model_dump()), key=order.customer
        )
    except (BrokerUnavailableError, UnroutableError) as exc:
        # Not stored anywhere: the client must retry (an outbox would make it ours to retry).
        raise HTTPException(status_code=503, detail=f"order not accepted: {exc}") from exc
    return Accepted(message_id=message_id)


@app.get("/readyz")
async def ready() -> dict[str, bool]:
    if not bus.ready:
        raise HTTPException(status_code=503, detail="not connected to the broker")
    return {"ready": True}
