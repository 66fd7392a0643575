"""`TestBus`: an app's real bus on a private broker, and the outcome of each publish without
polling: handled (with its attempts and arguments), dead-lettered (with the reason), duplicate,
unsettled; retries without waiting; the app's bus put back as it was."""

import time
from collections.abc import Callable

import anyio
import pydantic
import pytest

from eventbus import (
    Delivery,
    EventBus,
    Handler,
    MemoryDedupStore,
    Message,
    Reject,
    Retry,
    RetryPolicy,
    UnroutableError,
)
from eventbus import headers as h
from eventbus.testing import MemoryBroker, TestBus

SLOW = RetryPolicy(max_attempts=3, initial_delay=30.0, max_delay=30.0, jitter=False)
"""Backoff a test must never sleep through."""


class User(pydantic.BaseModel):
    name: str


async def test_the_minimal_test() -> None:
    bus = EventBus("memory://")

    @bus.subscribe("in", group="users")
    async def handle(user: User) -> None:
        pass

    async with TestBus(bus) as client:
        result = await client.publish("in", User(name="John"))
    assert result.handled_with == User(name="John")
    assert result.status == "handled" and len(result.attempts) == 1
    assert result.args == {"user": User(name="John")}
    assert result.outcome().handler is handle


async def test_a_retried_message_reports_each_attempt_without_waiting_for_backoff() -> None:
    bus = EventBus()

    @bus.subscribe("in", group="g", retry=SLOW)
    async def flaky(user: User, delivery: Delivery) -> None:
        if delivery.attempt < 3:
            raise ValueError(f"attempt {delivery.attempt}")

    started = time.monotonic()
    async with TestBus(bus) as client:
        result = await client.publish("in", User(name="a"))
    assert time.monotonic() - started < 15, "instant retries: the 30 s backoff is not waited"
    assert result.handled_with == User(name="a")
    assert [a.number for a in result.attempts] == [1, 2, 3]
    assert [str(e) for e in result.errors] == ["attempt 1", "attempt 2"]
    assert result.attempts[-1].error is None
    assert bus.subscribers[0].options.retry is SLOW, "the app's policy is put back"


async def test_retries_exhausted_dead_letter_with_reason_attempts_and_cause() -> None:
    bus = EventBus()

    @bus.subscribe("in", group="g", retry=SLOW)
    async def failing(user: User) -> None:
        raise KeyError(user.name)

    async with TestBus(bus) as client:
        result = await client.publish("in", User(name="x"))
        [letter] = client.published("in.g.dlq")
    assert result.status == "dead-lettered"
    assert result.reason == "retries-exhausted"
    assert len(result.attempts) == 3 and isinstance(result.error, KeyError)
    assert result.payload == User(name="x")
    assert letter.id == result.message.id
    assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
    assert letter.headers[h.ATTEMPTS] == "3"
    with pytest.raises(AssertionError, match="dead-lettered \\(retries-exhausted\\)"):
        _ = result.handled_with


async def test_reject_and_undecodable_dead_letter_at_once() -> None:
    bus = EventBus()

    @bus.subscribe("in", group="g")
    async def picky(user: User) -> None:
        raise Reject("no Bobs")

    async with TestBus(bus) as client:
        rejected = await client.publish("in", User(name="Bob"))
        poison = await client.publish("in", b"not json")
    assert (rejected.status, rejected.reason, len(rejected.attempts)) == (
        "dead-lettered",
        "rejected",
        1,
    )
    assert str(rejected.error) == "no Bobs"
    assert (poison.reason, poison.attempts, poison.payload) == ("undecodable", (), None)
    assert poison.error is not None and "cannot decode" in str(poison.error)


async def test_explicit_retry_and_nack_delays_are_not_waited() -> None:
    bus = EventBus()

    @bus.subscribe("in", group="g", retry=RetryPolicy(max_attempts=2))
    async def later(user: User) -> None:
        raise Retry(delay=60.0)

    @bus.consume("jobs", ack="manual", retry=RetryPolicy(max_attempts=3))
    async def nacking(user: User, delivery: Delivery) -> None:
        if delivery.attempt < 3:
            await delivery.nack(delay=60.0)
        else:
            await delivery.ack()

    started = time.monotonic()
    async with TestBus(bus) as client:
        retried = await client.publish("in", User(name="a"))
        nacked = await client.send("jobs", User(name="b"))
    assert time.monotonic() - started < 30
    assert (retried.reason, len(retried.attempts)) == ("retries-exhausted", 2)
    assert isinstance(retried.errors[0], Retry)
    assert nacked.handled_with == User(name="b") and len(nacked.attempts) == 3


async def test_instant_retries_off_keeps_the_policy_delays() -> None:
    bus = EventBus()

    @bus.subscribe("in", group="g", retry=RetryPolicy(initial_delay=0.3, jitter=False))
    async def flaky(delivery: Delivery) -> None:
        if delivery.attempt == 1:
            raise ValueError("once")

    async with TestBus(bus, instant_retries=False) as client:
        started = time.monotonic()
        result = await client.publish("in", {})
        assert time.monotonic() - started >= 0.3
    assert len(result.attempts) == 2


async def test_several_subscriptions_are_picked_by_handler_or_group() -> None:
    bus = EventBus()

    @bus.subscribe("orders", group="billing")
    async def bill(user: User) -> None:
        pass

    @bus.subscribe("orders", group="audit", retry=RetryPolicy(max_attempts=1))
    async def audit(user: User) -> None:
        raise RuntimeError("audit down")

    @bus.subscribe("orders")  # broadcast: a receiver of its own
    async def watch(message: Message) -> None:
        pass

    async with TestBus(bus) as client:
        result = await client.publish("orders", User(name="a"))
    assert len(result.outcomes) == 3
    assert result.outcome(bill).handled_with == User(name="a")
    assert result.outcome(group="audit").reason == "retries-exhausted"
    assert result.outcome(watch).args["message"].id == result.message.id  # type: ignore[attr-defined]
    with pytest.raises(AssertionError, match="3 subscriptions received it"):
        _ = result.handled_with
    with pytest.raises(AssertionError, match="0 outcomes for group 'nobody'"):
        result.outcome(group="nobody")


async def test_two_handlers_of_one_group_compete_and_one_outcome_names_the_winner() -> None:
    bus = EventBus()

    @bus.consume("jobs")
    async def first(user: User) -> None:
        pass

    @bus.consume("jobs")
    async def second(user: User) -> None:
        pass

    async with TestBus(bus) as client:
        result = await client.send("jobs", User(name="a"))
    assert result.status == "handled"
    assert result.outcome().handler in (first, second)


async def test_a_publish_nothing_receives_says_so_or_is_refused() -> None:
    bus = EventBus()

    @bus.subscribe("known", group="g")
    async def handle(user: User) -> None:
        pass

    async with TestBus(bus) as client:
        result = await client.publish("unknown", User(name="a"))
        assert (result.received, result.status, result.outcomes) == (False, "unreceived", ())
        with pytest.raises(AssertionError, match="no subscription received"):
            _ = result.handled_with
    async with TestBus(bus, unbound_topic="refuse") as client:
        assert bus.transport.capabilities.unbound_topic == "refuse"
        with pytest.raises(UnroutableError, match="'unknown'"):
            await client.publish("unknown", User(name="a"))
        assert (await client.publish("known", User(name="a"))).status == "handled"


async def test_manual_ack_left_unsettled_is_reported_at_once() -> None:
    ack_timeout = 60.0
    bus = EventBus(graceful_timeout=60.0)
    kept: list[Delivery] = []

    @bus.consume("jobs", ack="manual", ack_timeout=ack_timeout)
    async def hold(user: User, delivery: Delivery) -> None:
        kept.append(delivery)

    @bus.consume("acked", ack="manual", ack_timeout=ack_timeout)
    async def acks(user: User, delivery: Delivery) -> None:
        await delivery.ack()

    started = time.monotonic()
    async with TestBus(bus) as client:
        unsettled = await client.send("jobs", User(name="a"))
        acked = await client.send("acked", User(name="b"))
    # Neither the publish nor leaving the block waited for ack_timeout or graceful_timeout.
    assert time.monotonic() - started < ack_timeout / 2
    assert unsettled.status == "unsettled" and unsettled.payload == User(name="a")
    assert kept[0].settled, "given back when the block ended, never acked"
    assert acked.handled_with == User(name="b")


async def test_a_late_manual_settle_counts_once_and_idle_returns() -> None:
    bus = EventBus()
    kept: list[Delivery] = []

    @bus.consume("jobs", ack="manual")
    async def hold(user: User, delivery: Delivery) -> None:
        kept.append(delivery)

    async with TestBus(bus) as client:
        result = await client.send("jobs", User(name="a"))
        assert result.status == "unsettled"
        await kept[0].ack()
        await client.idle()  # counted once: nothing left pending
        again = await client.send("jobs", User(name="b"))
        assert again.status == "unsettled" and len(kept) == 2
    assert kept[0].settled and kept[1].settled


async def test_messages_handlers_publish_are_inspectable_and_idle_waits_for_them() -> None:
    bus = EventBus()
    invoiced: list[str] = []

    @bus.subscribe("orders", group="billing")
    async def bill(user: User) -> None:
        await bus.publish("invoices", User(name=f"invoice for {user.name}"))

    @bus.subscribe("invoices", group="mail", retry=SLOW)
    async def mail(invoice: User, delivery: Delivery) -> None:
        if delivery.attempt == 1:
            raise ConnectionError("smtp")
        invoiced.append(invoice.name)

    async with TestBus(bus) as client:
        result = await client.publish("orders", User(name="a"))
        assert result.handled_with == User(name="a")
        assert client.published("invoices", User) == [User(name="invoice for a")]
        [invoice] = client.published("invoices")
        assert invoice.headers[h.CAUSATION_ID] == result.message.id
        await client.idle()
        assert invoiced == ["invoice for a"]


async def test_dedup_default_store_is_fresh_per_block_a_given_one_is_kept() -> None:
    bus = EventBus()

    @bus.subscribe("in", group="g", dedup=True)
    async def once(user: User) -> None:
        pass

    for _ in range(2):  # a second block does not remember the first one's ids
        async with TestBus(bus) as client:
            first = await client.publish("in", User(name="a"), message_id="m-1")
            again = await client.publish("in", User(name="a"), message_id="m-1")
        assert (first.status, again.status, again.attempts) == ("handled", "duplicate", ())

    store = MemoryDedupStore()
    given = EventBus(dedup_store=store)

    @given.subscribe("in", group="g", dedup=True)
    async def once_more(user: User) -> None:
        pass

    async with TestBus(given) as client:
        assert (await client.publish("in", User(name="a"), message_id="m-1")).handled
    async with TestBus(given) as client:
        result = await client.publish("in", User(name="a"), message_id="m-1")
    assert result.status == "duplicate", "the app's own store is used as is"
    assert given.dedup_store is store


async def test_the_bus_runs_its_middleware_and_is_put_back_afterwards(
    url: str, broker: MemoryBroker
) -> None:
    seen: list[int] = []

    def count(handler: Handler) -> Handler:
        async def wrapped(delivery: Delivery) -> None:
            seen.append(delivery.attempt)
            await handler(delivery)

        return wrapped

    bus = EventBus(url, middleware=[count])

    @bus.subscribe("in", group="g")
    async def handle(user: User) -> None:
        pass

    transport, middleware, stats = bus.transport, bus.middleware, bus.subscribers[0].stats
    async with TestBus(bus) as client:
        await client.publish("in", User(name="a"))
        assert client.broker is not broker and bus.subscribers[0].stats.handled == 1
    assert seen == [1]
    assert broker.published("in") == [], "the app's own broker saw nothing"
    assert (bus.transport, bus.middleware, bus.subscribers[0].stats) == (
        transport,
        middleware,
        stats,
    )
    assert bus.subscribers[0].observer is None
    async with bus:  # and it still works on its own
        await bus.publish("in", User(name="b"))
    assert [m.topic for m in broker.published("in")] == ["in"]


async def test_a_handler_that_never_finishes_times_out_naming_what_is_pending() -> None:
    bus = EventBus(graceful_timeout=0.1)

    @bus.subscribe("in", group="g")
    async def stuck(user: User) -> None:
        await anyio.sleep_forever()

    async with TestBus(bus, timeout=0.2) as client:
        with pytest.raises(TimeoutError, match=r"had no outcome within 0.2s.*topic:in:g"):
            await client.publish("in", User(name="a"))


def test_works_without_a_pytest_async_plugin() -> None:
    """A plain function running its own event loop: TestBus needs no test runner support."""
    bus = EventBus()

    @bus.subscribe("in", group="g")
    async def handle(user: User) -> None:
        pass

    async def scenario() -> object:
        async with TestBus(bus) as client:
            return (await client.publish("in", User(name="John"))).handled_with

    assert anyio.run(scenario) == User(name="John")


def test_is_not_collected_as_a_test_class() -> None:
    assert TestBus.__test__ is False


async def test_outside_its_block_it_says_how_to_use_it(make_bus: Callable[..., EventBus]) -> None:
    client = TestBus(make_bus())
    with pytest.raises(RuntimeError, match="async with TestBus"):
        await client.publish("in", {})


async def test_a_failed_assert_in_the_block_propagates_unwrapped() -> None:
    bus = EventBus()

    @bus.subscribe("in", group="g")
    async def handle(user: User) -> None:
        pass

    with pytest.raises(AssertionError, match="the test's own"):
        async with TestBus(bus) as client:
            await client.publish("in", User(name="a"))
            raise AssertionError("the test's own")


async def test_a_bus_built_for_another_broker_runs_on_memory_in_the_block() -> None:
    bus = EventBus("kafka://127.0.0.1:1")  # nothing listens there

    @bus.subscribe("in", group="g")
    async def handle(user: User) -> None:
        pass

    async with TestBus(bus) as client:
        assert (await client.publish("in", User(name="a"))).handled
    assert type(bus.transport).__name__ == "KafkaTransport"


async def test_a_queue_result_is_the_message_as_sent_not_its_redelivery() -> None:
    bus = EventBus()

    @bus.consume("jobs", ack="manual")
    async def once_more(user: User, delivery: Delivery) -> None:
        if delivery.attempt == 1:
            await delivery.nack()
        else:
            await delivery.ack()

    async with TestBus(bus) as client:
        result = await client.send("jobs", User(name="a"), headers={"tenant": "t1"})
    assert result.message.headers == {"tenant": "t1"}
    assert result.outcome().message.headers[h.ATTEMPT] == "2"
    assert [a.number for a in result.attempts] == [1, 2]


async def test_a_broadcast_nack_is_followed_to_its_outcome() -> None:
    bus = EventBus()

    @bus.subscribe("news", ack="manual")
    async def listen(user: User, delivery: Delivery) -> None:
        if delivery.attempt < 3:
            await delivery.nack()
        else:
            await delivery.ack()

    async with TestBus(bus) as client:
        result = await client.publish("news", User(name="a"))
    assert result.handled and [a.number for a in result.attempts] == [1, 2, 3]


async def test_a_running_bus_is_refused() -> None:
    bus = EventBus()
    transport = bus.transport
    async with bus:
        with pytest.raises(RuntimeError, match="stop it first"):
            await TestBus(bus).__aenter__()
        assert bus.transport is transport


async def test_a_scheduled_publish_returns_once_it_fell_due_and_was_handled() -> None:
    bus = EventBus("memory://")
    handled_at: list[float] = []

    @bus.consume("reminders")
    async def remind(user: User) -> None:
        handled_at.append(time.time())

    async with TestBus(bus) as client:
        sent = time.time()
        result = await client.send("reminders", User(name="John"), delay=0.3)
        assert result.status == "handled" and result.handled_with == User(name="John")
        assert handled_at[0] - sent >= 0.3 - 0.002, "never early"
