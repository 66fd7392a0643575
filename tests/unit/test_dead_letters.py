"""Dead letters (DESIGN 3.4): where they go, turning them off, poison messages, and publishing a
dead letter before acking the original."""

import logging
from collections.abc import Callable, Sequence

import anyio
import pydantic
import pytest

from eventbus import EventBus, Message, PublishError, Reject, RetryPolicy
from eventbus import headers as h
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for
from eventbus.transports.base import Destination
from eventbus.transports.memory import MemoryTransport


class Order(pydantic.BaseModel):
    id: int


ONCE = RetryPolicy(max_attempts=1)


async def test_dead_letter_none_drops_with_an_error_log(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="g", dead_letter=None, retry=ONCE)
    async def handler(order: Order) -> None:
        calls.append(order.id)
        raise Reject("nope")

    with caplog.at_level(logging.ERROR, logger="eventbus"):
        async with bus:
            await bus.publish("orders", Order(id=1), message_id="dropped-1")
            await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1)
            await anyio.sleep(0.3)
    assert calls == [1], "not redelivered"
    assert [m.id for _, m in broker.log] == ["dropped-1"], "published nowhere else"
    assert broker.ready("orders", "g") == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        "dropped-1" in r.getMessage() and "dead_letter=None" in r.getMessage() for r in errors
    )


async def test_dead_letter_none_for_exhausted_retries_and_poison(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.consume("jobs", dead_letter=None, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async def handler(order: Order) -> None:
        calls.append(order.id)
        raise RuntimeError("always")

    with caplog.at_level(logging.ERROR, logger="eventbus"):
        async with bus:
            await bus.send("jobs", Order(id=1), message_id="exhausted")
            await bus.send("jobs", b"not json", message_id="poison")
            await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 2)
            await anyio.sleep(0.2)
    assert calls == [1, 1]
    assert [m.id for _, m in broker.log] == ["exhausted", "poison"]
    dropped = " ".join(r.getMessage() for r in caplog.records if "dropping" in r.getMessage())
    assert "exhausted" in dropped and "poison" in dropped


async def test_custom_dead_letter_name(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    dead: list[Message] = []

    @bus.subscribe("orders", group="g", dead_letter="orders-parking-lot", retry=ONCE)
    async def handler(order: Order) -> None:
        raise ValueError("bad")

    @bus.consume("orders-parking-lot")
    async def parked(message: Message) -> None:
        dead.append(message)

    async with bus:
        await bus.publish("orders", Order(id=1), message_id="p-1")
        await wait_for(lambda: len(dead) == 1)
    assert dead[0].id == "p-1"
    assert dead[0].headers[h.ORIGINAL_TOPIC] == "orders"
    assert broker.published("orders.g.dlq") == []


async def test_default_dead_letter_names(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()

    @bus.subscribe("orders", group="billing", retry=ONCE)
    async def grouped(order: Order) -> None:
        raise Reject

    @bus.subscribe("orders", retry=ONCE)
    async def broadcast(order: Order) -> None:
        raise Reject

    @bus.consume("emails", retry=ONCE)
    async def queue(order: Order) -> None:
        raise Reject

    async with bus:
        await bus.publish("orders", Order(id=1))
        await bus.send("emails", Order(id=2))
        await wait_for(lambda: sum(s.stats.dead_lettered for s in bus.subscribers) == 3)
    assert len(broker.published("orders.billing.dlq")) == 1
    assert len(broker.published("orders.broadcast.dlq")) == 1
    assert len(broker.published("emails.dlq")) == 1
    [letter] = broker.published("orders.billing.dlq")
    assert letter.headers[h.ORIGINAL_KIND] == "topic"
    assert letter.headers[h.ORIGINAL_PARTITION].isdigit(), "native facts are copied"


@pytest.mark.parametrize(
    ("annotation", "body"),
    [(str, b"\xff\xfe"), (dict, b"[1, 2]"), (dict, b"{not json"), (int, b'"x"')],
)
async def test_poison_for_each_payload_type(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, annotation: type, body: bytes
) -> None:
    bus = make_bus()
    calls: list[object] = []

    async def handler(value: annotation) -> None:  # type: ignore[valid-type]
        calls.append(value)

    bus.consume("jobs")(handler)
    async with bus:
        await bus.send("jobs", body, message_id="poison")
        await wait_for(lambda: len(broker.published("jobs.dlq")) == 1)
    assert calls == []
    [letter] = broker.published("jobs.dlq")
    assert letter.body == body
    assert letter.headers[h.DLQ_REASON] == "undecodable"
    assert letter.headers[h.ATTEMPTS] == "1"
    assert letter.headers[h.ERROR_TYPE] == "eventbus.codecs.base.DecodeError"


class FlakyDeadLetters(MemoryTransport):
    """Memory, except that the first ``failures`` publishes to a ``.dlq`` queue are refused."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        if to.name.endswith(".dlq") and self.failures > 0:
            self.failures -= 1
            raise PublishError("broker said no", {0: ConnectionError("no")})
        await super().publish(to, messages)


async def test_dead_letter_is_published_before_the_original_is_acked(
    url: str, broker: MemoryBroker
) -> None:
    transport = FlakyDeadLetters(url, failures=2)
    bus = EventBus(transport=transport, graceful_timeout=10.0)
    calls: list[int] = []

    @bus.subscribe("orders", group="g", retry=ONCE)
    async def handler(order: Order) -> None:
        calls.append(order.id)
        raise Reject

    async with bus:
        await bus.publish("orders", Order(id=1), message_id="m")
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
        await anyio.sleep(0.2)
    assert transport.failures == 0
    assert calls == [1], "the handler is not re-run while the dead letter is retried"
    assert broker.ready("orders", "g") == []
    assert [m.id for m in broker.published("orders.g.dlq")] == ["m"]


async def test_a_refused_dead_letter_pauses_until_accepted_also_when_wrapped() -> None:
    """DESIGN 13 on any transport: a dead letter refused for lack of permissions -- raised as
    such, or inside a PublishError as Kafka reports a refused write -- pauses fetching and
    makes the bus not ready; two refused messages with one id do not clear each other; once
    the broker accepts, both are dead-lettered and the bus is ready again."""
    from eventbus import AuthorizationError

    class Refusing(MemoryTransport):
        refuse = True
        wrapped = False

        async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
            if to.name.endswith(".dlq") and self.refuse:
                refused = AuthorizationError(f"no write on {to.name} for 'svc'")
                self.wrapped = not self.wrapped  # alternately bare and wrapped
                if self.wrapped:
                    raise PublishError("refused", dict.fromkeys(range(len(messages)), refused))
                raise refused
            await super().publish(to, messages)

    transport = Refusing(broker=MemoryBroker())
    bus = EventBus(transport=transport)
    seen: list[int] = []

    @bus.consume("jobs", concurrency=4, retry=RetryPolicy(max_attempts=1))
    async def fail(n: int) -> None:
        seen.append(n)
        raise ValueError("poison")

    async with bus:
        for n in (1, 2):  # the same id twice, as a foreign producer may send
            await bus.transport.publish(
                Destination("jobs", "queue"),
                [Message(id="same", topic="jobs", body=str(n).encode())],
            )
        await wait_for(lambda: not bus.ready, what="not ready while refused")
        await wait_for(lambda: sorted(seen) == [1, 2], what="both tried")
        await bus.send("jobs", 3)
        await anyio.sleep(0.5)
        assert 3 not in seen and not bus.ready, "fetching paused while refused"
        transport.refuse = False
        await wait_for(lambda: bus.ready, within=30, what="ready again")
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 3, what="all three")
