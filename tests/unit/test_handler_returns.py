"""A handler's return value (DESIGN 12): published to the declared destination (or, with a
reply-to on the message, sent there as the reply and nothing else) before the message is acked,
carrying the handled message's key, correlation id and causation id (DESIGN 9)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import BaseModel

from eventbus import EventBus, HandlerSignatureError, Message, RetryPolicy
from eventbus import headers as h
from eventbus.errors import ConfigurationError
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for
from eventbus.transports.base import Destination
from eventbus.transports.memory import MemoryTransport


class Order(BaseModel):
    order_id: int


class Invoice(BaseModel):
    order_id: int
    total: int


async def test_the_return_value_is_published_to_the_declared_topic(
    url: str, broker: MemoryBroker
) -> None:
    bus = EventBus(url)
    invoices: list[tuple[Invoice, Message]] = []

    @bus.subscribe("orders", group="billing", publish_to="invoices")
    async def bill(order: Order) -> Invoice:
        return Invoice(order_id=order.order_id, total=10 * order.order_id)

    @bus.subscribe("invoices", group="mail")
    async def mail(invoice: Invoice, message: Message) -> None:
        invoices.append((invoice, message))

    async with bus:
        await bus.publish("orders", Order(order_id=4), key="ada", message_id="o-4")
        await wait_for(lambda: len(invoices) == 1)
    invoice, message = invoices[0]
    assert invoice == Invoice(order_id=4, total=40)
    assert message.key == "ada", "the output keeps the input's key: per-key order downstream"
    assert message.correlation_id == "o-4" and message.headers[h.CAUSATION_ID] == "o-4"
    assert broker.ready("orders", "billing") == [], "the input was acked"


async def test_sync_handlers_and_queues_too(url: str, broker: MemoryBroker) -> None:
    bus = EventBus(url)

    @bus.consume("jobs", send_to="results")
    def work(n: dict[str, int]) -> dict[str, int]:
        return {"square": n["n"] ** 2}

    async with bus:
        await bus.send("jobs", {"n": 7})
        await wait_for(lambda: len(broker.published("results")) == 1)
    assert broker.published("results")[0].body == b'{"square":49}'


async def test_none_publishes_nothing(url: str, broker: MemoryBroker) -> None:
    bus = EventBus(url)
    handled: list[int] = []

    @bus.consume("jobs", send_to="results")
    async def work(n: dict[str, int]) -> dict[str, int] | None:
        handled.append(n["n"])
        return None if n["n"] == 1 else n

    async with bus:
        await bus.send("jobs", {"n": 1})
        await bus.send("jobs", {"n": 2})
        await wait_for(lambda: len(handled) == 2)
    assert [m.body for m in broker.published("results")] == [b'{"n":2}']


async def test_with_a_reply_to_the_value_is_the_reply_and_nothing_else(
    url: str, broker: MemoryBroker
) -> None:
    bus = EventBus(url)

    @bus.consume("quotes", publish_to="quoted")
    async def quote(order: Order) -> Invoice:
        return Invoice(order_id=order.order_id, total=3)

    async with bus:
        request = Message(
            id="req-1",
            topic="quotes",
            body=b'{"order_id": 9}',
            content_type="application/json",
            correlation_id="corr-9",
            reply_to="replies-a",
        )
        await bus.transport.publish(Destination("quotes", "queue"), [request])
        await wait_for(lambda: len(broker.published("replies-a")) == 1)
        await bus.send("quotes", Order(order_id=1))
        await wait_for(lambda: len(broker.published("quoted")) == 1)
    reply = broker.published("replies-a")[0]
    assert reply.body == b'{"order_id":9,"total":3}'
    assert reply.correlation_id == "corr-9", "replies are matched on the request's correlation id"
    assert reply.headers[h.CAUSATION_ID] == "req-1"
    assert [m.body for m in broker.published("quoted")] == [b'{"order_id":1,"total":3}'], (
        "only the message without a reply-to went to the declared destination"
    )


class _FailingOnce(MemoryTransport):
    """The output's first publish fails, as a broker that refused it would."""

    failed = False

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        if to.name == "invoices" and not self.failed:
            self.failed = True
            raise ConnectionError("broker went away")
        await super().publish(to, messages)


async def test_a_failed_output_publish_is_a_failed_attempt(url: str, broker: MemoryBroker) -> None:
    bus = EventBus(transport=_FailingOnce(url))
    attempts: list[int] = []

    @bus.subscribe(
        "orders",
        group="billing",
        publish_to="invoices",
        retry=RetryPolicy(max_attempts=3, initial_delay=0.01),
    )
    async def bill(order: Order) -> Invoice:
        attempts.append(order.order_id)
        return Invoice(order_id=order.order_id, total=1)

    async with bus:
        await bus.publish("orders", Order(order_id=5))
        await wait_for(lambda: len(broker.published("invoices")) == 1)
    assert attempts == [5, 5], "retried, not acked without its output"
    assert broker.published("orders.billing.dlq") == []


def test_declaring_a_destination_for_a_handler_that_returns_none_is_refused() -> None:
    bus = EventBus("memory://")
    with pytest.raises(
        HandlerSignatureError,
        match=r"bill: publishes .* 'invoices', but is annotated to return None",
    ):

        @bus.subscribe("orders", group="billing", publish_to="invoices")
        async def bill(order: Order) -> None: ...

    with pytest.raises(ConfigurationError, match="not both"):
        bus.subscribe("orders", group="g", publish_to="a", send_to="b")
    with pytest.raises(ConfigurationError, match="invalid topic name"):
        bus.subscribe("orders", group="g", publish_to="no spaces")


def test_declared_destinations_and_types_are_visible_for_tooling() -> None:
    bus = EventBus("memory://")

    @bus.subscribe("orders", group="billing", publish_to="invoices")
    async def bill(order: Order) -> Invoice:
        return Invoice(order_id=1, total=1)

    (sub,) = bus.subscribers
    assert sub.options.returns == Destination("invoices", "topic")
    assert sub.handler.return_type is Invoice
