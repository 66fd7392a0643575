"""OpenTelemetry tracing over real RabbitMQ (DESIGN 9): the scenarios of
tests/tracing_helpers.py, a bare ``traceparent`` header surviving the wire, and a raw aio-pika
producer's trace joined."""

from __future__ import annotations

from collections.abc import Callable

import aio_pika
import pytest
import tracing_helpers as th

from eventbus import Delivery, EventBus

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(180)]

Name = Callable[[str], str]


@pytest.fixture
def make_bus(amqp_url: str) -> th.MakeBus:
    def make(**options: object) -> EventBus:
        return EventBus(amqp_url, graceful_timeout=10.0, **options)  # type: ignore[arg-type]

    return make


async def test_one_trace_across_two_buses_and_a_handler_that_publishes(
    make_bus: th.MakeBus, name: Name
) -> None:
    await th.one_trace_across_buses(
        make_bus, name("trace"), name("trace-next"), name("g"), "rabbitmq"
    )


async def test_retry_via_broker_dead_letter_and_replay_keep_the_trace(
    make_bus: th.MakeBus, name: Name
) -> None:
    await th.retry_dead_letter_replay_keep_the_trace(make_bus, name("retry"), name("g"))


async def test_tracing_off_writes_and_records_nothing(make_bus: th.MakeBus, name: Name) -> None:
    await th.tracing_off_writes_and_records_nothing(make_bus, name("off"), name("g"))


@pytest.mark.parametrize("header", ["traceparent", "cloudEvents_traceparent"])
async def test_a_raw_aio_pika_producers_trace_is_joined(
    make_bus: th.MakeBus, name: Name, amqp_url: str, header: str
) -> None:
    provider, exporter = th.recorder()
    bus = make_bus(tracing=provider)
    topic, seen = name("foreign"), []

    @bus.subscribe(topic, group=name("g"))
    async def handler(payload: dict[str, int], delivery: Delivery) -> None:
        seen.append(dict(delivery.message.headers))

    async with bus:
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            exchange = await channel.get_exchange(topic)
            await exchange.publish(
                aio_pika.Message(
                    b'{"n": 1}',
                    message_id="foreign-1",
                    headers={header: th.FOREIGN_TRACEPARENT, "tracestate": "v=1"},
                ),
                routing_key="k-1",
            )
        finally:
            await connection.close()
        consumed = await th.foreign_traceparent_joins(exporter, topic)
    assert seen[0][header] == th.FOREIGN_TRACEPARENT, "the header reaches the handler untouched"
    assert consumed.parent is not None and consumed.parent.trace_state.get("v") == "1"
    assert (consumed.attributes or {})["messaging.message.id"] == "foreign-1"
