"""Handler signatures (DESIGN 2, 3.10): refused at decoration time with the handler's name;
every supported form gets what it asked for."""

import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pydantic
import pytest

from eventbus import (
    ConfigurationError,
    Delivery,
    EventBus,
    HandlerSignatureError,
    Message,
    Reject,
    RetryPolicy,
)
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for


class Order(pydantic.BaseModel):
    id: int


# -- refused at decoration time ---------------------------------------------------------------


def test_missing_annotation_names_the_handler_and_parameter(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()

    async def untyped_handler(order) -> None:  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(HandlerSignatureError, match=r"untyped_handler.*'order'.*no annotation"):
        bus.subscribe("orders", group="g")(untyped_handler)
    assert bus.subscribers == ()


def test_var_positional_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()

    async def star_args(*orders: Order) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match=r"star_args.*\*args"):
        bus.subscribe("orders", group="g")(star_args)


def test_var_keyword_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()

    async def star_kwargs(order: Order, **extra: Any) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match="star_kwargs"):
        bus.consume("jobs")(star_kwargs)


def test_two_payload_parameters_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()

    async def two_payloads(order: Order, other: dict) -> None:  # type: ignore[type-arg]
        pass

    with pytest.raises(HandlerSignatureError, match=r"two_payloads.*'other'.*second payload"):
        bus.subscribe("orders", group="g")(two_payloads)


def test_manual_ack_without_delivery_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()

    async def cannot_settle(order: Order, message: Message) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match=r"cannot_settle.*ack='manual'.*Delivery"):
        bus.subscribe("orders", group="g", ack="manual")(cannot_settle)
    with pytest.raises(HandlerSignatureError, match="cannot_settle"):
        bus.consume("jobs", ack="manual")(cannot_settle)
    assert bus.subscribers == ()


def test_unresolvable_annotation_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()

    async def forward_ref(order: "NoSuchModel") -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(HandlerSignatureError, match=r"forward_ref.*NoSuchModel"):
        bus.subscribe("orders", group="g")(forward_ref)


def test_positional_only_parameter_refused(make_bus: Callable[..., EventBus]) -> None:
    # Parameters are injected by name: a positional-only one would fail on every message.
    bus = make_bus()

    async def positional(order: Order, /) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match=r"positional.*'order'"):
        bus.subscribe("orders", group="g")(positional)


def test_signature_errors_are_configuration_and_type_errors() -> None:
    assert issubclass(HandlerSignatureError, ConfigurationError)
    assert issubclass(HandlerSignatureError, TypeError)
    assert issubclass(HandlerSignatureError, ValueError)


def test_dedup_key_without_dedup_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()

    async def handler(order: Order) -> None:
        pass

    with pytest.raises(ConfigurationError, match="dedup_key needs dedup"):
        bus.subscribe("orders", group="g", dedup_key=lambda m: m.id)(handler)


# -- accepted forms -----------------------------------------------------------------------------


async def test_every_supported_form_gets_what_it_asked_for(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    got: dict[str, list[Any]] = {}
    loop_thread = threading.get_ident()

    def record(name: str, *values: Any) -> None:
        got.setdefault(name, []).append(values)

    @bus.subscribe("model", group="g")
    async def model(order: Order) -> None:
        record("model", order)

    @bus.subscribe("raw", group="g")
    async def raw(body: bytes) -> None:
        record("raw", body)

    @bus.subscribe("text", group="g")
    async def text(body: str) -> None:
        record("text", body)

    @bus.subscribe("mapping", group="g")
    async def mapping(body: dict) -> None:  # type: ignore[type-arg]
        record("mapping", body)

    @bus.subscribe("message", group="g")
    async def message_only(message: Message) -> None:
        record("message", message)

    @bus.subscribe("delivery", group="g")
    async def delivery_only(delivery: Delivery) -> None:
        record("delivery", delivery.message.id, delivery.attempt, delivery.settled)

    @bus.subscribe("everything", group="g")
    async def everything(delivery: Delivery, message: Message, order: Order) -> None:
        record("everything", delivery.message.id, message.id, order)

    @bus.subscribe("defaults", group="g")
    async def with_default(order: Order, extra=None) -> None:  # type: ignore[no-untyped-def]
        record("defaults", order, extra)

    @bus.consume("sync-jobs")
    def blocking(order: Order, message: Message) -> None:
        # A plain `def` handler runs in a worker thread, never on the event loop.
        record("sync", order, message.id, threading.get_ident() != loop_thread)

    async with bus:
        await bus.publish("model", Order(id=1))
        await bus.publish("raw", b"\x00\xffraw")
        await bus.publish("text", "héllo")
        await bus.publish("mapping", {"a": [1, 2]})
        await bus.publish("message", b"m", message_id="msg-1")
        await bus.publish("delivery", b"d", message_id="dlv-1")
        await bus.publish("everything", Order(id=7), message_id="all-1")
        await bus.publish("defaults", Order(id=8))
        await bus.send("sync-jobs", Order(id=9), message_id="sync-1")
        await wait_for(lambda: len(got) == 9, what=f"every handler (got {sorted(got)})")

    assert got["model"] == [(Order(id=1),)]
    assert got["raw"] == [(b"\x00\xffraw",)]
    assert got["text"] == [("héllo",)]
    assert got["mapping"] == [({"a": [1, 2]},)]
    [(message,)] = got["message"]
    assert isinstance(message, Message) and message.id == "msg-1" and message.body == b"m"
    assert got["delivery"] == [("dlv-1", 1, False)]
    assert got["everything"] == [("all-1", "all-1", Order(id=7))]
    assert got["defaults"] == [(Order(id=8), None)]
    assert got["sync"] == [(Order(id=9), "sync-1", True)]
    assert all(s.stats.handled == 1 for s in bus.subscribers)
    assert not any(s.stats.failed_attempts for s in bus.subscribers)


async def test_message_before_the_payload(make_bus: Callable[..., EventBus]) -> None:
    # "The first parameter that is not a Delivery or Message is the payload", wherever the
    # Message parameter stands.
    bus = make_bus()
    got: list[tuple[str, Order]] = []

    @bus.subscribe("orders", group="g")
    async def message_first(message: Message, order: Order) -> None:
        got.append((message.id, order))

    async with bus:
        await bus.publish("orders", Order(id=3), message_id="m-3")
        await wait_for(lambda: len(got) == 1)
    assert got == [("m-3", Order(id=3))]


async def test_sync_handler_does_not_block_the_loop(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    release = threading.Event()
    fast: list[int] = []
    slow: list[int] = []

    @bus.consume("slow")
    def blocking(order: Order) -> None:
        release.wait(30)
        slow.append(order.id)

    @bus.consume("fast")
    async def quick(order: Order) -> None:
        fast.append(order.id)

    async with bus:
        await bus.send("slow", Order(id=1))
        await anyio.sleep(0.1)
        await bus.send("fast", Order(id=2))
        await wait_for(lambda: fast == [2], what="the async handler while the sync one blocks")
        assert slow == []
        release.set()
        await wait_for(lambda: slow == [1])


async def test_sync_wrapper_around_an_async_handler_runs_its_body(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    # A decorator's plain `def` wrapper returns the coroutine: acking without awaiting it would
    # count the message as handled while the handler never ran (DESIGN 3.1).
    def traced(func: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Coroutine[Any, Any, None]:
            calls.append("wrapper")
            return func(*args, **kwargs)

        return wrapper

    bus = make_bus()
    calls: list[str] = []

    @bus.subscribe("orders", group="g", retry=RetryPolicy(max_attempts=1))
    @traced
    async def handle(order: Order) -> None:
        calls.append(f"body {order.id}")
        if order.id == 2:
            raise Reject("the body's outcome counts")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await bus.publish("orders", Order(id=2))
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
        await wait_for(lambda: bus.subscribers[0].stats.handled == 1)
    assert calls == ["wrapper", "body 1", "wrapper", "body 2"]
