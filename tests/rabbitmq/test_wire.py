"""Message <-> AMQP properties and headers (no broker needed)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from eventbus_rabbitmq import wire
from pamqp.commands import Basic

from eventbus.message import Message
from eventbus.transports.cloudevents import format_time


def _roundtrip(message: Message) -> Message:
    properties = wire.encode(message)
    return wire.decode(
        message.topic,
        message.body,
        properties,
        exchange=message.topic,
        routing_key=wire.routing_key(message),
    )


def test_roundtrip_keeps_every_attribute() -> None:
    message = Message(
        id="id-1",
        topic="orders",
        body=b"\x00\xffbinary",
        key="order-42",
        headers={"tenant": "a", "unicode": "Grüße ✓"},
        content_type="application/json",
        type="OrderPlaced",
        timestamp=datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
        correlation_id="corr-1",
        reply_to="replies.client-7",
    )
    assert _roundtrip(message) == message


def test_reply_to_is_the_native_amqp_property() -> None:
    message = Message(id="i", topic="t", body=b"", reply_to="replies.client-7")
    properties = wire.encode(message)
    assert properties.reply_to == "replies.client-7"
    assert "eventbus-reply-to" not in (properties.headers or {})
    assert _roundtrip(Message(id="i", topic="t", body=b"")).reply_to is None
    # A foreign request (no CloudEvents headers) with a reply address: read back as it is.
    foreign = wire.decode(
        "t",
        b"",
        Basic.Properties(reply_to="amq.rabbitmq.reply-to.g1h"),
        exchange="",
        routing_key="t",
    )
    assert foreign.reply_to == "amq.rabbitmq.reply-to.g1h"


def test_a_reply_address_too_long_for_the_property_travels_whole() -> None:
    long_address = "replies." + "x" * 300
    message = Message(id="i", topic="t", body=b"", reply_to=long_address)
    properties = wire.encode(message)
    assert properties.reply_to is not None and len(properties.reply_to.encode()) <= 255
    assert _roundtrip(message).reply_to == long_address


def test_native_properties_and_cloudevents_headers() -> None:
    message = Message(id="id-1", topic="t", body=b"{}", key="k", type="T", content_type="a/b")
    properties = wire.encode(message)
    assert properties.message_id == "id-1"
    assert properties.message_type == "T"
    assert properties.content_type == "a/b"
    assert properties.delivery_mode == 2
    assert properties.timestamp is not None
    headers = properties.headers or {}
    assert headers["cloudEvents_specversion"] == "1.0"
    assert headers["cloudEvents_source"]
    assert headers["cloudEvents_time"] == format_time(message.timestamp)
    assert headers["cloudEvents_time"].endswith("Z")
    assert headers[wire.KEY_HEADER] == "k"


def test_routing_key_is_the_key_or_the_id_and_fits_amqp() -> None:
    assert wire.routing_key(Message(id="i", topic="t", body=b"", key="k")) == "k"
    assert wire.routing_key(Message(id="i", topic="t", body=b"")) == "i"
    long_key = "k" * 300
    routed = wire.routing_key(Message(id="i", topic="t", body=b"", key=long_key))
    assert len(routed) <= 255
    assert routed == wire.routing_key(Message(id="j", topic="t", body=b"", key=long_key))


def test_overlong_short_strings_travel_in_headers() -> None:
    message = Message(id="i" * 400, topic="t", body=b"", type="T" * 300, correlation_id="c" * 256)
    properties = wire.encode(message)
    assert len((properties.message_id or "").encode()) <= 255
    back = _roundtrip(message)
    assert (back.id, back.type, back.correlation_id) == (
        message.id,
        message.type,
        message.correlation_id,
    )


def test_foreign_message_with_odd_headers_is_decoded() -> None:
    properties = Basic.Properties(
        headers={
            "bytes": b"caf\xc3\xa9",
            "bad-bytes": b"\xff\xfe",
            "int": 7,
            "bool": True,
            "decimal": Decimal("1.5"),
            "when": datetime(2024, 1, 1, tzinfo=UTC),
            "nested": {"a": [1, b"x"]},
            "none": None,
            "x-death": [{"count": 1, "queue": "q"}],
        },
        timestamp=datetime(2024, 1, 1, tzinfo=UTC),
    )
    message = wire.decode("orders", b"body", properties, exchange="orders", routing_key="rk-7")
    assert message.headers["bytes"] == "café"
    assert message.headers["int"] == "7"
    assert message.headers["bool"] == "true"
    assert message.headers["decimal"] == "1.5"
    assert message.headers["when"].startswith("2024-01-01")
    assert message.headers["none"] == "None"
    assert "x-death" not in message.headers
    assert isinstance(message.headers["nested"], str)
    assert message.key == "rk-7", "a foreign producer's routing key is its key"
    assert message.timestamp == datetime(2024, 1, 1, tzinfo=UTC)


def test_a_message_without_message_id_gets_a_random_id_per_delivery() -> None:
    # DESIGN 4: two identical commands are not duplicates, so no id is derived from the
    # content (deduplication would skip the second); each delivery gets its own.
    before = wire.ids_made_up
    same = Basic.Properties(headers={"a": "1"})
    first = wire.decode("q", b"b", same, exchange="", routing_key="q")
    second = wire.decode("q", b"b", same, exchange="", routing_key="q")
    assert first.id != second.id and first.id.startswith("amqp-")
    assert wire.ids_made_up == before + 2, "counted"
    assert first.key is None, "no key from the default exchange's routing key (a queue name)"


@pytest.mark.parametrize(
    "written",
    [
        "2024-05-01T12:30:15.123456Z",
        "2024-05-01T12:30:15.123456+00:00",
        "2024-05-01T14:30:15.123456+02:00",
    ],
)
def test_cloudevents_time_is_read_in_either_form(written: str) -> None:
    """0.2 writes RFC 3339 with a Z; 0.1 wrote +00:00 (a rolling upgrade reads both)."""
    properties = Basic.Properties(
        headers={"cloudEvents_specversion": "1.0", "cloudEvents_time": written}
    )
    message = wire.decode("t", b"", properties, exchange="t", routing_key="k")
    assert message.timestamp == datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def test_routing_headers_a_0_1_worker_wrote_are_dropped_on_read() -> None:
    # eventbus 0.1 put them on its retries; 0.2 routes by exchange and must not pass them on.
    message = Message(id="m", topic="orders", body=b"{}", headers={"tenant": "a"})
    properties = wire.encode(message)
    assert properties.headers is not None
    properties.headers["eventbus-target-group"] = "billing"
    properties.headers["eventbus-not-before"] = "1764583200.000"
    got = wire.decode("orders", b"{}", properties, exchange="orders", routing_key="m")
    assert got.headers == {"tenant": "a"}
