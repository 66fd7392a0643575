"""A small service: orders are billed (with retries and dedup), billing sends e-mail commands to
a queue, orders that can never be billed end up in the dead-letter queue, and prices are quoted
on request (request-reply: the handler's return value is the reply).

    eventbus run examples.orders.service:bus          # memory:// unless EVENTBUS_URL is set

A demo producer places an order every half second (set EVENTBUS_DEMO_PRODUCER=0 to turn it off,
e.g. when running several workers against a real broker). Stop with Ctrl-C.
"""

import itertools
import os
from decimal import Decimal

import anyio
from pydantic import BaseModel

from eventbus import Delivery, EventBus, Message, RetryPolicy

bus = EventBus(graceful_timeout=5.0)


class OrderPlaced(BaseModel):
    order_id: int
    customer: str
    amount: Decimal


class SendEmail(BaseModel):
    to: str
    subject: str


def say(who: str, text: str) -> None:
    print(f"{who:<9}| {text}", flush=True)


@bus.subscribe(
    "orders",
    group="billing",
    concurrency=4,
    retry=RetryPolicy(max_attempts=3, initial_delay=0.2, max_delay=2.0),
    dedup=True,
)
async def bill(order: OrderPlaced, delivery: Delivery) -> None:
    if order.amount < 0:
        raise ValueError(f"cannot bill a negative amount ({order.amount})")
    if order.order_id % 5 == 0 and delivery.attempt == 1:
        raise ConnectionError("payment provider timed out")  # transient: the retry succeeds
    say(
        "billing",
        f"charged order {order.order_id}: {order.amount} EUR (attempt {delivery.attempt})",
    )
    await bus.send(
        "emails",
        SendEmail(
            to=f"{order.customer}@example.com", subject=f"Receipt for order {order.order_id}"
        ),
        key=order.customer,
    )


class QuoteRequest(BaseModel):
    sku: str
    quantity: int


class Quote(BaseModel):
    sku: str
    quantity: int
    total: Decimal


PRICES = {"apple": Decimal("0.40"), "pear": Decimal("0.55")}


@bus.consume("prices", concurrency=8, retry=RetryPolicy(max_attempts=1))
async def quote(request: QuoteRequest) -> Quote:
    """Answers ``bus.request("prices", ...)``. One attempt: whoever asked is waiting, and an
    unknown product will not become known on a retry (the caller gets `ResponderError`)."""
    if request.sku not in PRICES:
        raise LookupError(f"no price for {request.sku!r}")
    if request.sku == "pear":
        await anyio.sleep(0.05)  # a slower lookup
    total = PRICES[request.sku] * request.quantity
    say("prices", f"quoted {request.quantity} x {request.sku}: {total} EUR")
    return Quote(sku=request.sku, quantity=request.quantity, total=total)


@bus.consume("emails")
async def send_email(email: SendEmail) -> None:
    say("emails", f"to {email.to}: {email.subject!r}")


@bus.consume("orders.billing.dlq")
async def watch_dead_letters(letter: Message) -> None:
    reason = letter.headers.get("eventbus-dlq-reason")
    error = letter.headers.get("eventbus-error-message")
    attempts = letter.headers.get("eventbus-attempts")
    say("dlq", f"order message {letter.id[:8]} dead-lettered ({reason} after {attempts}): {error}")


@bus.on_startup
async def place_orders() -> None:
    if os.environ.get("EVENTBUS_DEMO_PRODUCER", "1") == "0":
        return
    customers = itertools.cycle(["ada", "grace", "linus", "barbara"])
    for order_id in itertools.count(1):
        # Every 7th order has a negative amount: it fails every attempt and is dead-lettered.
        amount = Decimal("-1.00") if order_id % 7 == 0 else Decimal(order_id * 3) + Decimal("0.99")
        customer = next(customers)
        await bus.publish(
            "orders",
            OrderPlaced(order_id=order_id, customer=customer, amount=amount),
            key=customer,
        )
        say("orders", f"placed order {order_id} for {customer}")
        await anyio.sleep(0.5)
