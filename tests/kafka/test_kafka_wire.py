"""CloudEvents binary mode on Kafka records (DESIGN 4), and lenient reading of foreign ones."""

from datetime import UTC, datetime

from eventbus_kafka.wire import from_record, to_record

from eventbus.message import Message


def _read(record_headers: list[tuple[str, bytes | None]], **fields: object) -> Message:
    defaults: dict[str, object] = {
        "topic": "orders",
        "record_topic": "orders",
        "partition": 3,
        "offset": 17,
        "key": None,
        "value": b"body",
        "headers": record_headers,
        "timestamp_ms": 1_700_000_000_000,
    }
    defaults.update(fields)
    return from_record(**defaults)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    sent = Message(
        id="id-1",
        topic="orders",
        body=bytes(range(256)),
        key="clé-1",
        headers={"tenant": "ünïcødé ✓", "eventbus-attempt": "2"},
        content_type="application/json",
        type="OrderPlaced",
        timestamp=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        correlation_id="corr-1",
    )
    record = to_record(sent)
    names = dict(record.headers)
    assert names["ce_id"] == b"id-1"
    assert names["ce_source"] == b"eventbus"
    assert names["ce_specversion"] == b"1.0"
    assert names["ce_type"] == b"OrderPlaced"
    assert names["ce_time"] == b"2024-05-06T07:08:09.123456Z"
    assert names["content-type"] == b"application/json"
    assert names["ce_correlationid"] == b"corr-1"
    assert names["tenant"] == "ünïcødé ✓".encode()
    assert record.key == "clé-1".encode()
    got = _read(record.headers, key=record.key, value=record.value)
    assert got == sent


def test_optional_attributes_are_omitted() -> None:
    record = to_record(Message(id="x", topic="t", body=b""))
    names = [name for name, _ in record.headers]
    assert "ce_type" not in names
    assert "content-type" not in names
    assert "ce_correlationid" not in names
    assert record.key is None


def test_foreign_record_gets_a_stable_id_and_the_record_time() -> None:
    got = _read(
        [("x-bin", b"\xff\xfe"), ("plain", b"ok"), ("null", None)],
        key=b"\xffkey",
        record_topic="orders.billing.retry",
    )
    assert got.id == "orders.billing.retry/3/17"
    assert got.topic == "orders"
    assert got.timestamp == datetime.fromtimestamp(1_700_000_000, UTC)
    assert got.headers == {"x-bin": "\xff\xfe", "plain": "ok", "null": ""}
    assert got.key == "\xffkey"
    assert got.content_type is None
    assert got.type is None


def test_foreign_cloudevent_keeps_its_source_and_extensions() -> None:
    got = _read(
        [
            ("ce_id", b"abc"),
            ("ce_source", b"/billing"),
            ("ce_specversion", b"1.0"),
            ("ce_time", b"not a time"),
            ("ce_subject", b"order-1"),
        ]
    )
    assert got.id == "abc"
    assert got.headers == {"ce_source": "/billing", "ce_subject": "order-1"}
    assert got.timestamp == datetime.fromtimestamp(1_700_000_000, UTC)  # bad ce_time: fallback
    names = dict(to_record(got).headers)
    assert names["ce_source"] == b"/billing"


def test_tombstone_reads_as_empty_body() -> None:
    assert _read([], value=None).body == b""
