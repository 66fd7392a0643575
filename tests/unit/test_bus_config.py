"""Bad input gets a clear error and loses nothing (DESIGN 3.10): URLs, schemes, names, headers,
options, and the lifecycle rules of `EventBus` (DESIGN 2)."""

import re
from collections.abc import Callable

import anyio
import pydantic
import pytest

from eventbus import ConfigurationError, EventBus, Message, UnknownSchemeError
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for
from eventbus.transports.memory import MemoryTransport
from eventbus.transports.registry import installed_schemes


class Order(pydantic.BaseModel):
    id: int


async def noop(order: Order) -> None:
    pass


# -- URLs and schemes ---------------------------------------------------------------------------


def test_unknown_scheme_lists_the_installed_ones() -> None:
    with pytest.raises(UnknownSchemeError) as caught:
        EventBus("nosuch://127.0.0.1:1234")
    error = caught.value
    assert error.scheme == "nosuch"
    assert "memory" in error.installed
    assert error.installed == installed_schemes()
    for scheme in installed_schemes():
        assert f"{scheme}://" in str(error)
    assert "'nosuch'" in str(error)
    assert isinstance(error, ConfigurationError)


@pytest.mark.parametrize("url", ["localhost:9092", "not a url", "", "//host:1"])
def test_bad_url(url: str) -> None:
    with pytest.raises(ConfigurationError, match="bad eventbus URL"):
        EventBus(url or "://")


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("memory://name/path", "bad memory transport URL"),
        ("memory://name?x=1", "unknown memory URL option 'x'; known options: retention"),
        ("memory://name?retention=-1", "retention='-1': expected an integer >= 0"),
    ],
)
def test_bad_memory_url(url: str, error: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(error)):
        EventBus(url)


def test_url_defaults_to_environment_then_memory(
    monkeypatch: pytest.MonkeyPatch, broker_name: str, broker: MemoryBroker
) -> None:
    monkeypatch.setenv("EVENTBUS_URL", f"memory://{broker_name}")
    bus = EventBus()
    assert bus.url == f"memory://{broker_name}"
    assert isinstance(bus.transport, MemoryTransport)
    assert bus.transport.broker is broker
    monkeypatch.delenv("EVENTBUS_URL")
    assert EventBus().url == "memory://"


def test_url_and_transport_are_exclusive(url: str) -> None:
    with pytest.raises(ConfigurationError, match="either a url or a transport"):
        EventBus(url, transport=MemoryTransport(url))


def test_injected_transport_is_used(url: str, broker: MemoryBroker) -> None:
    transport = MemoryTransport(url)
    bus = EventBus(transport=transport)
    assert bus.transport is transport


def test_negative_graceful_timeout_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="graceful_timeout"):
        EventBus(url, graceful_timeout=-1)


# -- names ----------------------------------------------------------------------------------------

BAD_NAMES = ["", "has space", "-leading-dash", ".dot", "slash/name", "x" * 201, "ünïcode", "a*b"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_topic_group_queue_names(make_bus: Callable[..., EventBus], bad: str) -> None:
    bus = make_bus()
    with pytest.raises(ConfigurationError, match="invalid topic name"):
        bus.subscribe(bad, group="g")
    with pytest.raises(ConfigurationError, match="invalid group name"):
        bus.subscribe("orders", group=bad)
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        bus.consume(bad)
    with pytest.raises(ConfigurationError, match="invalid dead-letter queue name"):
        bus.subscribe("orders", group="g", dead_letter=bad)
    assert bus.subscribers == ()


@pytest.mark.parametrize("good", ["a", "orders.v1", "Orders_2-eu", "9lives", "x" * 200])
def test_valid_names_accepted(make_bus: Callable[..., EventBus], good: str) -> None:
    bus = make_bus()
    bus.subscribe(good, group=good)(noop)
    bus.consume(good)(noop)
    assert len(bus.subscribers) == 2


async def test_publish_and_send_check_names(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    async with bus:
        with pytest.raises(ConfigurationError, match="invalid topic name"):
            await bus.publish("bad topic", Order(id=1))
        with pytest.raises(ConfigurationError, match="invalid queue name"):
            await bus.send("bad/queue", Order(id=1))
        with pytest.raises(ConfigurationError, match="invalid topic name"):
            await bus.publish_many("", [Order(id=1)])


# -- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"concurrency": 0}, "concurrency must be >= 1"),
        ({"concurrency": 4, "max_in_flight": 3}, r"max_in_flight \(3\) must be >= concurrency"),
        ({"ack": "sometimes"}, "ack must be 'auto' or 'manual'"),
        ({"ack_timeout": 0}, "ack_timeout must be > 0"),
        ({"ack_timeout": -1.0}, "ack_timeout must be > 0"),
        ({"ack_timeout": None}, "ack_timeout=None would let an unsettled manual-ack delivery"),
    ],
)
def test_bad_subscription_options(
    make_bus: Callable[..., EventBus], options: dict[str, object], match: str
) -> None:
    bus = make_bus()
    with pytest.raises(ConfigurationError, match=match):
        bus.subscribe("orders", group="g", **options)  # type: ignore[arg-type]


def test_default_options(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    bus.subscribe("orders", group="billing", concurrency=3)(noop)
    bus.subscribe("orders")(noop)
    bus.consume("emails")(noop)
    billing, broadcast, emails = bus.subscribers
    assert billing.options.max_in_flight == 12, "max_in_flight defaults to a small multiple"
    assert billing.dead_letter == "orders.billing.dlq"
    assert broadcast.dead_letter == "orders.broadcast.dlq"
    assert emails.dead_letter == "emails.dlq"
    assert billing.options.retry.max_attempts == 3, "no retry= still gets a bounded default"
    assert billing.options.ack == "auto" and billing.options.dedup is None
    assert billing.options.ack_timeout == 900.0, "manual acks are never unbounded"


# -- headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eventbus-dlq-reason", "eventbus-target-group", "eventbus-x"])
async def test_reserved_header_prefix_refused(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, name: str
) -> None:
    bus = make_bus()
    async with bus:
        with pytest.raises(ConfigurationError, match="eventbus- prefix is reserved"):
            await bus.publish("orders", Order(id=1), headers={name: "x"})
        with pytest.raises(ConfigurationError, match="reserved"):
            await bus.send("jobs", Order(id=1), headers={name: "x"})
    assert not broker.log, "nothing half-published"


async def test_header_values_must_be_text(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    async with bus:
        with pytest.raises(ConfigurationError, match="headers must map str to str"):
            await bus.publish("orders", Order(id=1), headers={"n": 1})  # type: ignore[dict-item]


async def test_publish_many_keys_must_match(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    async with bus:
        with pytest.raises(ConfigurationError, match="keys must be as long as payloads"):
            await bus.publish_many("orders", [Order(id=1), Order(id=2)], keys=["a"])


async def test_unencodable_payload_is_a_type_error(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    async with bus:
        with pytest.raises(TypeError, match="cannot encode"):
            await bus.publish("orders", object())


# -- lifecycle ---------------------------------------------------------------------------------


async def test_publish_outside_the_running_bus(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    with pytest.raises(RuntimeError, match=r"not running.*async with bus"):
        await bus.publish("orders", Order(id=1))
    with pytest.raises(RuntimeError, match="not running"):
        await bus.send("jobs", Order(id=1))
    with pytest.raises(RuntimeError, match="not running"):
        await bus.publish_many("orders", [Order(id=1)])
    async with bus:
        await bus.publish("orders", Order(id=1))
    with pytest.raises(RuntimeError, match="not running"):
        await bus.publish("orders", Order(id=2))


async def test_registering_after_start_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    async with bus:
        with pytest.raises(RuntimeError, match="before the bus starts"):
            bus.subscribe("orders", group="g")
        with pytest.raises(RuntimeError, match="before the bus starts"):
            bus.consume("jobs")
    assert bus.subscribers == ()


async def test_entering_a_running_bus_twice_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    async with bus:
        with pytest.raises(RuntimeError, match="already running"):
            await bus.__aenter__()


async def test_bus_without_handlers_is_a_publisher(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    async with bus:
        message_id = await bus.send("jobs", Order(id=1), key="k", correlation_id="c")
        ids = await bus.publish_many("orders", [Order(id=2), Order(id=3)], keys=["a", None])
    assert [m.id for m in broker.published("jobs")] == [message_id]
    assert [m.id for m in broker.published("orders")] == ids
    [job] = broker.ready("jobs")
    assert job.key == "k" and job.correlation_id == "c" and job.type == "Order"


async def test_a_bus_can_run_again_after_stopping(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    seen: list[int] = []

    @bus.subscribe("orders", group="g")
    async def handler(order: Order) -> None:
        seen.append(order.id)

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: seen == [1])
    async with bus:
        await bus.publish("orders", Order(id=2))
        await wait_for(lambda: seen == [1, 2])


async def test_every_subscription_is_live_when_the_block_is_entered(
    make_bus: Callable[..., EventBus],
) -> None:
    # A second bus publishes right after the first entered: nothing is missed, no sleep needed.
    consumer, publisher = make_bus(), make_bus()
    got: list[str] = []

    @consumer.subscribe("events")
    async def broadcast(message: Message) -> None:
        got.append(f"broadcast:{message.id}")

    @consumer.subscribe("events", group="g")
    async def grouped(message: Message) -> None:
        got.append(f"group:{message.id}")

    async with publisher, consumer:
        await publisher.publish("events", b"x", message_id="1")
        await wait_for(lambda: len(got) == 2)
        await anyio.sleep(0.1)
    assert sorted(got) == ["broadcast:1", "group:1"]
