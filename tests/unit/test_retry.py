"""Retries (DESIGN 3.3) and the dead letters they end in (3.4): the policy's arithmetic, and what
the dispatcher does with it."""

import itertools
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import anyio
import pydantic
import pytest

from eventbus import ConfigurationError, Delivery, EventBus, Message, Reject, Retry, RetryPolicy
from eventbus import headers as h
from eventbus.retry import DEFAULT_RETRY
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for


class Order(pydantic.BaseModel):
    id: int


def quick(**options: object) -> RetryPolicy:
    defaults: dict[str, object] = {"initial_delay": 0.01, "max_delay": 0.05, "jitter": False}
    return RetryPolicy(**{**defaults, **options})  # type: ignore[arg-type]


# -- the policy --------------------------------------------------------------------------------


def test_exact_delays_without_jitter() -> None:
    policy = RetryPolicy(max_attempts=6, initial_delay=0.1, max_delay=30.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    triple = RetryPolicy(initial_delay=0.5, multiplier=3.0, jitter=False)
    assert [triple.delay(n) for n in (1, 2, 3)] == pytest.approx([0.5, 1.5, 4.5])
    flat = RetryPolicy(initial_delay=0.25, multiplier=1.0, jitter=False)
    assert {flat.delay(n) for n in range(1, 10)} == {0.25}


def test_max_delay_caps_the_backoff() -> None:
    policy = RetryPolicy(initial_delay=1.0, multiplier=10.0, max_delay=5.0, jitter=False)
    assert policy.delay(1) == 1.0
    assert policy.delay(2) == 5.0
    assert policy.delay(30) == 5.0
    jittered = RetryPolicy(initial_delay=1.0, multiplier=10.0, max_delay=5.0)
    rng = random.Random(3)
    assert all(0.0 <= jittered.delay(20, rng) <= 5.0 for _ in range(500))


def test_full_jitter_within_zero_and_the_ceiling() -> None:
    policy = RetryPolicy(initial_delay=0.2, multiplier=2.0, max_delay=30.0)
    ceilings = {1: 0.2, 2: 0.4, 3: 0.8, 4: 1.6}
    rng = random.Random(1234)
    draws = {n: [policy.delay(n, rng) for _ in range(300)] for n in ceilings}
    for n, ceiling in ceilings.items():
        assert all(0.0 <= d <= ceiling for d in draws[n]), f"attempt {n} outside [0, {ceiling}]"
        # Full jitter: draws spread over the whole range (not "half fixed, half random").
        assert min(draws[n]) < ceiling * 0.1 and max(draws[n]) > ceiling * 0.9
    # The draw is the injected generator's: the same seed gives the same delays.
    again = random.Random(1234)
    assert [policy.delay(1, again) for _ in range(300)] == draws[1]
    expected = random.Random(99)
    got = random.Random(99)
    assert [policy.delay(3, got) for _ in range(5)] == [expected.uniform(0, 0.8) for _ in range(5)]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"initial_delay": -0.1}, "delays must be >= 0"),
        ({"max_delay": -1.0}, "delays must be >= 0"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
    ],
)
def test_invalid_policies_refused(options: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RetryPolicy(**options)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_give_up_on_wins_over_retry_on() -> None:
    policy = RetryPolicy(retry_on=(OSError,), give_up_on=(ConnectionRefusedError,))
    assert policy.retryable(ConnectionResetError())
    assert not policy.retryable(ConnectionRefusedError())
    assert not policy.retryable(ValueError())


def test_default_policy_is_bounded() -> None:
    assert DEFAULT_RETRY.max_attempts == 3
    assert DEFAULT_RETRY.jitter and DEFAULT_RETRY.initial_delay > 0
    assert not DEFAULT_RETRY.via_broker


# -- the dispatcher applying it ------------------------------------------------------------------


async def test_give_up_on_dead_letters_at_once_as_rejected(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="g", retry=quick(max_attempts=5, give_up_on=(KeyError,)))
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        raise KeyError("unknown customer")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
    assert calls == [1]
    [letter] = broker.published("orders.g.dlq")
    assert letter.headers[h.DLQ_REASON] == "rejected"
    assert letter.headers[h.ERROR_TYPE] == "builtins.KeyError"
    assert letter.headers[h.ATTEMPTS] == "1"
    assert bus.subscribers[0].stats.retried == 0


async def test_retry_on_narrows_what_is_retried(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: dict[int, list[int]] = defaultdict(list)

    @bus.subscribe("orders", group="g", retry=quick(max_attempts=3, retry_on=(ConnectionError,)))
    async def handler(order: Order, delivery: Delivery) -> None:
        calls[order.id].append(delivery.attempt)
        raise ConnectionError("flaky") if order.id == 1 else ValueError("a bug")

    async with bus:
        await bus.publish("orders", Order(id=1), message_id="transient")
        await bus.publish("orders", Order(id=2), message_id="permanent")
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 2)
    assert calls == {1: [1, 2, 3], 2: [1]}
    reasons = {m.id: m.headers[h.DLQ_REASON] for m in broker.published("orders.g.dlq")}
    assert reasons == {"transient": "retries-exhausted", "permanent": "rejected"}


async def test_raise_retry_delay_is_honoured(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    times: list[float] = []
    done: list[int] = []

    # The policy's own backoff is tiny: only Retry(delay=...) can explain the wait.
    @bus.subscribe("orders", group="g", retry=quick(max_attempts=5, initial_delay=0.001))
    async def handler(order: Order, delivery: Delivery) -> None:
        times.append(time.monotonic())
        if delivery.attempt == 1:
            raise Retry(delay=0.4)
        assert delivery.redelivered
        done.append(delivery.attempt)

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: done == [2])
    assert times[1] - times[0] >= 0.39
    stats = bus.subscribers[0].stats
    assert (stats.failed_attempts, stats.retried, stats.handled) == (1, 1, 1)


async def test_retry_without_delay_uses_the_policy_backoff(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    times: list[float] = []

    @bus.subscribe("orders", group="g", retry=RetryPolicy(initial_delay=0.3, jitter=False))
    async def handler(order: Order, delivery: Delivery) -> None:
        times.append(time.monotonic())
        if delivery.attempt == 1:
            raise Retry()

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(times) == 2)
    assert times[1] - times[0] >= 0.29


async def test_retry_counts_against_max_attempts_even_outside_retry_on(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    # retry_on does not list Retry: asking for a retry is always honoured, and always counted.
    policy = quick(max_attempts=3, retry_on=(ConnectionError,))

    @bus.subscribe("orders", group="g", retry=policy)
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        raise Retry(delay=0.01, reason="not ready yet")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
    assert calls == [1, 2, 3]
    [letter] = broker.published("orders.g.dlq")
    assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
    assert letter.headers[h.ATTEMPTS] == "3"
    assert letter.headers[h.ERROR_TYPE] == "eventbus.errors.Retry"
    assert letter.headers[h.ERROR_MESSAGE] == "not ready yet"
    assert bus.subscribers[0].stats.retried == 2


async def test_reject_is_never_retried(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.consume("jobs", retry=quick(max_attempts=5, retry_on=(Exception, Reject)))
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        raise Reject()

    async with bus:
        await bus.send("jobs", Order(id=1))
        await wait_for(lambda: len(broker.published("jobs.dlq")) == 1)
    assert calls == [1]
    [letter] = broker.published("jobs.dlq")
    assert letter.headers[h.DLQ_REASON] == "rejected"
    assert letter.headers[h.ERROR_MESSAGE] == "rejected by handler"
    assert letter.headers[h.ORIGINAL_KIND] == "queue"
    assert letter.headers[h.ORIGINAL_GROUP] == ""


async def test_default_policy_three_attempts_then_dead_letter(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="g")
    async def always_fails(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        raise RuntimeError("broken")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
        await anyio.sleep(0.3)
    assert calls == [1, 2, 3], "never endless redelivery"
    [letter] = broker.published("orders.g.dlq")
    assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
    assert letter.headers[h.ATTEMPTS] == "3"
    assert "RuntimeError: broken" in letter.headers[h.ERROR_TRACEBACK]


async def test_attempts_grow_exponentially_in_process(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    times: list[float] = []
    policy = RetryPolicy(max_attempts=4, initial_delay=0.1, multiplier=3.0, jitter=False)

    @bus.consume("jobs", retry=policy)
    async def handler(order: Order, delivery: Delivery) -> None:
        times.append(time.monotonic())
        if delivery.attempt < 4:
            raise ConnectionError

    async with bus:
        await bus.send("jobs", Order(id=1))
        await wait_for(lambda: len(times) == 4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.29 and gaps[2] >= 0.89, gaps


async def test_via_broker_retry_goes_to_the_failed_group_only(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    a_calls: list[int] = []
    b_calls: list[int] = []
    times: list[float] = []

    @bus.subscribe("orders", group="a", retry=quick(max_attempts=3, via_broker=True))
    async def a(order: Order, delivery: Delivery) -> None:
        a_calls.append(delivery.attempt)
        times.append(time.monotonic())
        if delivery.attempt == 1:
            raise Retry(delay=0.3)
        if delivery.attempt == 2:
            raise ConnectionError("again")

    @bus.subscribe("orders", group="b")
    async def b(order: Order) -> None:
        b_calls.append(order.id)

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(a_calls) == 3)
        await anyio.sleep(0.2)
    assert a_calls == [1, 2, 3]
    assert b_calls == [1], "a retry through the broker reaches only the group that failed"
    assert times[1] - times[0] >= 0.29, "Retry(delay=) is honoured through the broker too"
    retries = [(d, m) for d, m in broker.log if d.name == "orders"][1:]
    assert [m.headers[h.ATTEMPT] for _, m in retries] == ["2", "3"]
    assert {d.group for d, _ in retries} == {"a"}
    assert bus.subscribers[0].stats.redelivered == 2


async def test_via_broker_exhausted_dead_letter_keeps_the_application_headers(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="g", retry=quick(max_attempts=2, via_broker=True))
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        raise ConnectionError("down")

    async with bus:
        await bus.publish("orders", Order(id=1), headers={"tenant": "t1"})
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
    assert calls == [1, 2]
    [letter] = broker.published("orders.g.dlq")
    assert letter.headers[h.ATTEMPTS] == "2"
    assert letter.headers["tenant"] == "t1"
    assert not [k for k in letter.headers if "target" in k or "not-before" in k]


async def test_via_broker_on_a_broadcast_retries_in_process(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    # A broadcast subscription has no group to re-publish to: the retry stays in process.
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", retry=quick(max_attempts=3, via_broker=True))
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        if delivery.attempt < 3:
            raise ConnectionError

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: calls == [1, 2, 3])
    assert len(broker.published("orders")) == 1


async def test_dead_letter_error_fields_are_bounded(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()

    def recurse(n: int) -> None:
        if n == 0:
            raise ValueError("x" * 50_000)
        recurse(n - 1)

    @bus.consume("jobs", retry=quick(max_attempts=1))
    async def handler(message: Message) -> None:
        recurse(200)

    async with bus:
        await bus.send("jobs", b"body", message_id="big-error")
        await wait_for(lambda: len(broker.published("jobs.dlq")) == 1)
    [letter] = broker.published("jobs.dlq")
    assert letter.body == b"body" and letter.id == "big-error"
    assert 0 < len(letter.headers[h.ERROR_MESSAGE]) <= 1000
    assert 0 < len(letter.headers[h.ERROR_TRACEBACK]) <= 4000
    assert letter.headers[h.ERROR_TRACEBACK].rstrip().endswith("x"), "keeps the end: the raise"


async def test_routing_headers_do_not_reach_the_handler() -> None:
    """A broker retry is addressed to one group; a handler republishing it must not carry that."""
    bus = EventBus(f"memory://{uuid.uuid4().hex}")
    seen: list[dict[str, str]] = []
    policy = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False, via_broker=True)

    @bus.subscribe("t", group="g", retry=policy)
    async def flaky(message: Message, delivery: Delivery) -> None:
        seen.append(dict(message.headers))
        if delivery.attempt == 1:
            raise ConnectionError("again")

    async with bus:
        await bus.publish("t", b"x", headers={"tenant": "a"})
        await wait_for(lambda: len(seen) == 2)
    assert seen[1]["tenant"] == "a"
    assert seen[1]["eventbus-attempt"] == "2"
    assert "eventbus-target-group" not in seen[1]
