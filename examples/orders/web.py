"""The HTTP front of the orders service: it publishes, the workers handle.

    uvicorn examples.orders.web:app            # memory:// unless EVENTBUS_URL is set
    eventbus run examples.orders.service:bus   # the workers, in their own processes

It imports the service's bus (one definition of topics and models), but its lifespan starts it
with ``bus.publisher()``: the web process never joins the ``billing`` group, so it takes no
orders away from the workers and a deploy of the web tier never rebalances them.

``GET /quotes`` is the synchronous front over asynchronous work: it asks the workers for a price
with ``bus.request`` and answers with their reply, 504 when none came in time, 404 when the
worker could not price it.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from eventbus import (
    BrokerUnavailableError,
    RequestTimeoutError,
    ResponderError,
    UnroutableError,
)
from examples.orders.service import OrderPlaced, Quote, QuoteRequest, bus

log = logging.getLogger("orders.web")

QUOTE_TIMEOUT = 2.0
"""Seconds a quote may take, the broker round trips included; then the client gets a 504."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with bus.publisher():
        await bus.open_replies()  # now, not on the first quote (on Kafka: a group join)
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


@app.get("/quotes")
async def get_quote(
    sku: str = Query(min_length=1, max_length=50), quantity: int = Query(gt=0, le=1000)
) -> Quote:
    """Answered by a worker: the request waits for its reply, never longer than QUOTE_TIMEOUT."""
    try:
        reply: Quote = await bus.request(
            "prices",
            QuoteRequest(sku=sku, quantity=quantity),
            response=Quote,
            timeout=QUOTE_TIMEOUT,
        )
    except RequestTimeoutError as exc:
        # No worker answered in time (none running, or all busy). The request expires unhandled
        # with the timeout, so a worker that comes back later does not price it for no one.
        raise HTTPException(status_code=504, detail=f"no quote in time: {exc}") from exc
    except ResponderError as exc:
        if exc.error_type == "LookupError":
            raise HTTPException(status_code=404, detail=exc.error_message) from exc
        # The worker's error text stays in our logs: it may say more than a client should see.
        log.error("pricing %s x %s failed: %s", quantity, sku, exc)
        raise HTTPException(status_code=502, detail="pricing failed") from exc
    except BrokerUnavailableError as exc:
        raise HTTPException(status_code=503, detail=f"broker unavailable: {exc}") from exc
    return reply


@app.get("/readyz")
async def ready() -> dict[str, bool]:
    if not bus.ready:
        raise HTTPException(status_code=503, detail="not connected to the broker")
    return {"ready": True}
