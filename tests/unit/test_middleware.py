"""Middleware (STYLE 4): ``Callable[[Handler], Handler]``, the first given is the outermost; it
wraps every attempt, sees its outcome, and may decide it."""

import anyio
import pydantic

from eventbus import Delivery, EventBus, Handler, Middleware, Reject, RetryPolicy
from eventbus import headers as h
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for


class Order(pydantic.BaseModel):
    id: int


FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False)


def tracing(name: str, log: list[str]) -> Middleware:
    def middleware(call_next: Handler) -> Handler:
        async def handle(delivery: Delivery) -> None:
            log.append(f"{name}>{delivery.attempt}")
            try:
                await call_next(delivery)
            except Exception as exc:
                log.append(f"{name}!{type(exc).__name__}")
                raise
            log.append(f"{name}<")

        return handle

    return middleware


async def test_first_middleware_is_outermost_and_sees_exceptions(url: str) -> None:
    log: list[str] = []
    bus = EventBus(url, middleware=[tracing("outer", log), tracing("inner", log)])

    @bus.subscribe("orders", group="g", retry=FAST)
    async def handler(order: Order, delivery: Delivery) -> None:
        log.append(f"handler{delivery.attempt}")
        if delivery.attempt == 1:
            raise ConnectionError("flaky")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: bus.subscribers[0].stats.handled == 1)
    assert log == [
        "outer>1",
        "inner>1",
        "handler1",
        "inner!ConnectionError",
        "outer!ConnectionError",
        "outer>2",
        "inner>2",
        "handler2",
        "inner<",
        "outer<",
    ]


async def test_middleware_wraps_every_subscription(url: str) -> None:
    log: list[str] = []
    bus = EventBus(url, middleware=[tracing("mw", log)])
    calls: list[str] = []

    @bus.subscribe("orders", group="g")
    async def a(order: Order) -> None:
        calls.append("a")

    @bus.consume("jobs")
    async def b(order: Order) -> None:
        calls.append("b")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await bus.send("jobs", Order(id=2))
        await wait_for(lambda: sorted(calls) == ["a", "b"] and log.count("mw<") == 2)
    assert log.count("mw>1") == 2


async def test_middleware_can_short_circuit(url: str, broker: MemoryBroker) -> None:
    def skip_test_traffic(call_next: Handler) -> Handler:
        async def handle(delivery: Delivery) -> None:
            if delivery.message.headers.get("test") == "1":
                return  # not passed on: the handler never sees it, and it is acked
            await call_next(delivery)

        return handle

    bus = EventBus(url, middleware=[skip_test_traffic])
    calls: list[int] = []

    @bus.subscribe("orders", group="g")
    async def handler(order: Order) -> None:
        calls.append(order.id)

    async with bus:
        await bus.publish("orders", Order(id=1), headers={"test": "1"})
        await bus.publish("orders", Order(id=2))
        await wait_for(lambda: bus.subscribers[0].stats.handled == 2)
        await anyio.sleep(0.2)
    assert calls == [2]
    assert broker.ready("orders", "g") == []
    assert len(broker.published("orders")) == 2, "nothing redelivered"


async def test_middleware_can_swallow_or_turn_errors_into_rejects(
    url: str, broker: MemoryBroker
) -> None:
    def policy(call_next: Handler) -> Handler:
        async def handle(delivery: Delivery) -> None:
            try:
                await call_next(delivery)
            except LookupError:
                pass  # "already gone": treat as done
            except ValueError as exc:
                raise Reject(f"invalid: {exc}") from exc

        return handle

    bus = EventBus(url, middleware=[policy])
    calls: list[int] = []

    @bus.consume("jobs", retry=FAST)
    async def handler(order: Order) -> None:
        calls.append(order.id)
        if order.id == 1:
            raise KeyError("gone")
        raise ValueError("negative amount")

    async with bus:
        await bus.send("jobs", Order(id=1), key="k")
        await bus.send("jobs", Order(id=2), key="k")
        await wait_for(lambda: len(broker.published("jobs.dlq")) == 1)
        await anyio.sleep(0.2)
    assert calls == [1, 2], "neither was retried"
    [letter] = broker.published("jobs.dlq")
    assert letter.headers[h.DLQ_REASON] == "rejected"
    assert letter.headers[h.ERROR_MESSAGE] == "invalid: negative amount"
    assert bus.subscribers[0].stats.handled == 1
