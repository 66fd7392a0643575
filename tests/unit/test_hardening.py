"""Whatever a handler raises, the subscription goes on and the message ends handled, retried or
dead-lettered; dead letters always get out (DESIGN 8: "Nothing escapes, nothing is stranded",
"Dead letters always get out")."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import anyio
import pydantic
import pytest

from eventbus import ClaimResult, Delivery, EventBus, MemoryDedupStore, Message, RetryPolicy
from eventbus import headers as h
from eventbus.dispatch.deadletter import HEADER_LIMIT
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for
from eventbus.transports.base import Destination
from eventbus.transports.memory import MemoryTransport

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02, jitter=False)


class Order(pydantic.BaseModel):
    id: int


@pytest.mark.parametrize(
    "raised",
    [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(3)],
    ids=["CancelledError", "KeyboardInterrupt", "SystemExit"],
)
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_base_exception_from_a_handler_follows_the_retry_policy(
    url: str, broker: MemoryBroker, raised: BaseException, sync: bool
) -> None:
    bus = EventBus(url)
    calls: list[int] = []

    def work(order: Order) -> None:
        calls.append(order.id)
        if order.id == 1:
            raise raised

    if sync:
        bus.subscribe("orders", group="g", retry=FAST)(work)
    else:

        @bus.subscribe("orders", group="g", retry=FAST)
        async def handle(order: Order) -> None:
            work(order)

    async with bus:
        await bus.publish("orders", Order(id=1), key="k")
        await bus.publish("orders", Order(id=2), key="k")  # same key: after the failing one
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
        await wait_for(lambda: 2 in calls, what="the subscription goes on")
    assert calls == [1, 1, 1, 2], "three attempts, then the next message of the key"
    [letter] = broker.published("orders.g.dlq")
    assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
    assert letter.headers[h.ERROR_TYPE].endswith(type(raised).__qualname__)
    assert bus.subscribers[0].stats.failed_attempts == 3


async def test_give_up_on_names_a_base_exception_to_dead_letter_at_once(
    url: str, broker: MemoryBroker
) -> None:
    bus = EventBus(url)
    calls = 0

    @bus.subscribe("orders", group="g", retry=RetryPolicy(give_up_on=(KeyboardInterrupt,)))
    async def handle(order: Order) -> None:
        nonlocal calls
        calls += 1
        raise KeyboardInterrupt

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
    assert calls == 1
    assert broker.published("orders.g.dlq")[0].headers[h.DLQ_REASON] == "rejected"


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (ValueError("file caf\udce9.txt"), "file caf\ufffd.txt"),
        (Unprintable(), "<Unprintable: cannot be shown (RuntimeError)>"),
        (ValueError("x" * 5000), "x" * 1000),
    ],
    ids=["lone-surrogate", "raising-str", "huge"],
)
async def test_dead_letter_headers_are_always_encodable_and_bounded(
    url: str, broker: MemoryBroker, error: Exception, shown: str
) -> None:
    bus = EventBus(url)

    @bus.consume("jobs", retry=RetryPolicy(max_attempts=1))
    async def handle(message: Message) -> None:
        raise error

    async with bus:
        # A foreign producer's header with a lone surrogate and one of 100 000 characters.
        odd = {"name": "caf\udce9", "big": "y" * 100_000}
        bad = Message(id="m", topic="jobs", body=b"{}", headers=odd)
        await bus.transport.publish(Destination("jobs", "queue"), [bad])
        await wait_for(lambda: len(broker.published("jobs.dlq")) == 1)
    letter = broker.published("jobs.dlq")[0]
    assert letter.headers[h.ERROR_MESSAGE] == shown
    assert letter.headers["name"] == "caf\ufffd" and len(letter.headers["big"]) == HEADER_LIMIT
    for value in letter.headers.values():
        value.encode("utf-8")  # never raises


class FlakyPublish(MemoryTransport):
    """Publishes to dead-letter and retry destinations fail ``failures`` times first."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        if (to.name.endswith(".dlq") or to.group is not None) and self.failures:
            self.failures -= 1
            raise ConnectionError("the broker is restarting")
        await super().publish(to, messages)


@pytest.mark.parametrize("via_broker", [False, True], ids=["dead-letter", "retry"])
async def test_a_failing_republish_is_retried_and_never_reruns_the_handler(
    url: str, broker: MemoryBroker, via_broker: bool
) -> None:
    transport = FlakyPublish(url, failures=4)
    bus = EventBus(transport=transport)
    attempts: list[int] = []
    policy = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False, via_broker=via_broker)

    @bus.subscribe("orders", group="g", retry=policy)
    async def handle(order: Order, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise ValueError("always")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1, within=60)
        await anyio.sleep(0.2)
    assert attempts == [1, 2], "each attempt ran once: only the publishes were retried"
    assert bus.subscribers[0].stats.republish_failures == 4
    assert len(broker.published("orders.g.dlq")) == 1


class PickyStore(MemoryDedupStore):
    """Refuses one key for good (a value it cannot hold); ``down`` fails every key."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def claim(self, scope: str, key: str, *, owner: str, lease: float) -> ClaimResult:
        if self.down or key == "bad":
            raise ValueError(f"cannot store {key!r}")
        return await super().claim(scope, key, owner=owner, lease=lease)


async def test_a_store_that_refuses_one_key_fails_that_message_not_the_rest(
    url: str, broker: MemoryBroker
) -> None:
    store = PickyStore()
    bus = EventBus(url, dedup_store=store)
    handled: list[str] = []

    @bus.subscribe("orders", group="g", dedup=True, retry=FAST, concurrency=2)
    async def handle(message: Message) -> None:
        handled.append(message.id)

    async with bus:
        await bus.publish("orders", b"{}", message_id="bad", key="a")
        for i in range(20):  # other keys keep the store busy and healthy meanwhile
            await bus.publish("orders", b"{}", message_id=f"ok{i}", key=f"k{i}")
            await anyio.sleep(0.05)
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1, within=60)
    assert "bad" not in handled and len(handled) == 20
    [letter] = broker.published("orders.g.dlq")
    assert letter.id == "bad" and letter.headers[h.DLQ_REASON] == "retries-exhausted"
    assert "KeyRefusedError" in letter.headers[h.ERROR_TYPE]


async def test_a_store_outage_waits_and_spends_no_attempt(url: str, broker: MemoryBroker) -> None:
    store = PickyStore()
    store.down = True
    bus = EventBus(url, dedup_store=store)
    attempts: list[int] = []

    @bus.subscribe("orders", group="g", dedup=True, retry=FAST)
    async def handle(order: Order, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)

    async with bus:
        await bus.publish("orders", Order(id=1))
        await anyio.sleep(1.0)  # every claim fails: no key is healthy, so it is an outage
        assert attempts == [] and broker.published("orders.g.dlq") == []
        store.down = False
        await wait_for(lambda: attempts == [1])


async def test_a_dedup_key_that_raises_is_a_failed_attempt(url: str, broker: MemoryBroker) -> None:
    bus = EventBus(url)
    handled: list[int] = []

    def key_of(message: Message) -> str:
        if message.key == "boom":
            raise KeyError("tenant")
        return message.id

    @bus.subscribe("orders", group="g", dedup=True, dedup_key=key_of, retry=FAST)
    async def handle(order: Order) -> None:
        handled.append(order.id)

    async with bus:
        await bus.publish("orders", Order(id=1), key="boom")
        await bus.publish("orders", Order(id=2), key="fine")
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1 and handled == [2])
    [letter] = broker.published("orders.g.dlq")
    assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
    assert letter.headers[h.ATTEMPTS] == "3" and "KeyError" in letter.headers[h.ERROR_TYPE]


@pytest.mark.parametrize(
    ("written", "attempt"),
    [
        ("abc", 1),
        ("", 1),
        ("-5", 1),
        ("1e309", 1),
        ("9" * 5000, 1),  # longer than int() reads
        (" 2 ", 2),
        ("99999999999999999999", 99999999999999999999),
    ],
)
async def test_any_attempt_header_a_foreign_producer_writes_is_handled(
    url: str, broker: MemoryBroker, written: str, attempt: int
) -> None:
    bus = EventBus(url)
    seen: list[int] = []

    @bus.consume("jobs", retry=FAST)
    async def handle(delivery: Delivery) -> None:
        seen.append(delivery.attempt)

    async with bus:
        odd = Message(id="m", topic="jobs", body=b"{}", headers={h.ATTEMPT: written})
        await bus.transport.publish(Destination("jobs", "queue"), [odd])
        await wait_for(lambda: seen == [attempt])


@pytest.mark.parametrize("mode", ["bus", "publisher"])
async def test_what_the_async_with_body_raises_comes_out_as_itself(mode: str) -> None:
    """Not inside the bus's task group's exception group: `except KeyError` works."""
    bus = EventBus(f"memory://body-{mode}")
    with pytest.raises(KeyError, match="from the body") as raised:
        async with bus if mode == "bus" else bus.publisher():
            raise KeyError("from the body")
    assert not isinstance(raised.value, BaseExceptionGroup)
    assert not bus.ready
