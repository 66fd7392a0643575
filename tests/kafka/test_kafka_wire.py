"""CloudEvents binary mode on Kafka records (DESIGN 4), and lenient reading of foreign ones."""

from datetime import UTC, datetime, timedelta, timezone

from eventbus_kafka.wire import (
    NOT_BEFORE,
    REPLY_TO,
    TARGET_GROUP,
    decode,
    from_record,
    routing,
    to_record,
)

from eventbus.message import Message
from eventbus.transports.cloudevents import format_time


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
        reply_to="orders.replies",
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
    assert names["eventbus-reply-to"] == b"orders.replies"
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
    assert REPLY_TO not in names
    assert TARGET_GROUP not in names and NOT_BEFORE not in names
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


def _reference_time(moment: datetime) -> str:
    """The formatting before `format_time` cached and sliced: the result must not change."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_format_time_is_rfc3339_utc_whatever_the_zone_and_the_cache() -> None:
    """The core's formatter, which ``ce_time`` on Kafka depends on byte for byte."""
    paris = timezone(timedelta(hours=2))
    moments = [
        datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),  # cached
        datetime(2024, 5, 6, 7, 8, 9, 123456),  # naive, equal wall time: not the cached one
        datetime(2024, 5, 6, 9, 8, 9, 123456, tzinfo=paris),  # same instant as the first
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=paris),
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=paris),
        datetime.min,
        datetime.min.replace(tzinfo=UTC),
        datetime(2024, 5, 6, 7, 8, 9, 123457, tzinfo=UTC),
    ]
    for moment in moments:
        assert format_time(moment) == _reference_time(moment)
    assert format_time(moments[3]) == "2024-05-06T07:08:09.123456Z"
    assert format_time(moments[4]) == "2024-05-06T05:08:09.000000Z"


def test_messages_sharing_a_timestamp_each_get_their_own_id_and_time() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=UTC)
    first, second = (
        to_record(Message(id=f"id-{i}", topic="t", body=b"", timestamp=moment)) for i in (1, 2)
    )
    later = to_record(Message(id="id-3", topic="t", body=b"", timestamp=moment.replace(second=10)))
    assert dict(first.headers)["ce_id"] == b"id-1" and dict(second.headers)["ce_id"] == b"id-2"
    assert dict(first.headers)["ce_time"] == dict(second.headers)["ce_time"]
    assert dict(later.headers)["ce_time"] == b"2024-05-06T07:08:10.000001Z"


def test_a_foreign_source_header_is_kept_and_ours_is_added_otherwise() -> None:
    ours = dict(to_record(Message(id="x", topic="t", body=b"", headers={"a": "1"})).headers)
    foreign = dict(
        to_record(Message(id="x", topic="t", body=b"", headers={"ce_source": "erp"})).headers
    )
    assert ours["ce_source"] == b"eventbus" and ours["a"] == b"1"
    assert foreign["ce_source"] == b"erp"


def test_routing_headers_come_from_the_destination_and_never_reach_the_core() -> None:
    """The names stay what 0.1 workers read; copies among a message's headers (a handler
    republishing what it got) are dropped, and reading strips them."""
    assert (TARGET_GROUP, NOT_BEFORE) == ("eventbus-target-group", "eventbus-not-before")
    republished = Message(
        id="x", topic="t", body=b"", headers={TARGET_GROUP: "old", NOT_BEFORE: "1.0", "a": "1"}
    )
    plain = to_record(republished)
    assert routing(plain.headers) == (None, None)
    assert dict(plain.headers)["a"] == b"1"

    targeted = to_record(republished, target_group="billing", not_before=1700000000.25)
    names = dict(targeted.headers)
    assert names[TARGET_GROUP] == b"billing"
    assert names[NOT_BEFORE] == b"1700000000.250"
    assert routing(targeted.headers) == ("billing", 1700000000.25)
    assert _read(targeted.headers).headers == {"a": "1"}


def test_unreadable_due_times_count_as_due() -> None:
    for raw in (b"soon", b"nan", b"inf", b"\xff", b""):
        assert routing([(NOT_BEFORE, raw)]) == (None, None)
    assert routing([(NOT_BEFORE, None), (TARGET_GROUP, b"")]) == (None, None)


def test_reply_to_is_read_back_and_is_not_an_application_header() -> None:
    got = _read([("ce_id", b"x"), (REPLY_TO, b"replies")])
    assert got.reply_to == "replies"
    assert got.headers == {}
    assert _read([("ce_id", b"x")]).reply_to is None


def _decode(
    record_headers: list[tuple[str, bytes | None]], timestamp_ms: int | None = 1_700_000_000_000
) -> tuple[Message | None, str | None, float | None]:
    return decode("orders", "orders", 3, 17, None, b"body", record_headers, timestamp_ms)


def test_decode_reads_message_and_routing_in_one_pass_as_the_two_readers_do() -> None:
    """What the fetch loop uses: the same message as `from_record`, the same routing as
    `routing`, whatever the order and repetitions of the headers."""
    sent = Message(
        id="id-1",
        topic="orders",
        body=b"body",
        headers={"tenant": "t1", "ce_source": "/erp"},
        content_type="application/json",
        type="OrderPlaced",
        timestamp=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        correlation_id="corr-1",
        reply_to="replies",
    )
    routed = to_record(sent, target_group="billing", not_before=1700000000.25).headers
    cases: list[list[tuple[str, bytes | None]]] = [
        routed,
        routed[::-1],
        [*routed, (NOT_BEFORE, b"soon"), (TARGET_GROUP, b"")],  # unreadable: the earlier due
        [(NOT_BEFORE, b"inf"), ("tenant", b"a"), ("tenant", b"\xff"), ("ce_id", None)],
        [("ce_time", b"2024-05-06T09:08:09+02:00"), ("ce_source", b"eventbus")],
        [("ce_time", b"2024-05-06T07:08:09Z"), ("ce_time", b"garbage")],  # last wins
        [],
    ]
    for headers in cases:
        message, target, due = _decode(headers)
        assert message == _read(headers, key=None), headers
        assert message is not None and message.timestamp.tzinfo is UTC
        assert (target, due) == routing(headers), headers
    message, _, _ = _decode(routed)
    assert message == sent
    assert message is not None and type(message) is Message and repr(message) == repr(sent)


def test_decode_leaves_a_record_read_at_hand_out_time_to_the_caller_when_asked() -> None:
    """No usable time (no ``ce_time``, a record time a datetime cannot hold): its time is when
    it is read, so the fetch loop leaves the decoding to the hand-out (routing still read)."""
    for stamp in (None, -1, 2**62):
        headers: list[tuple[str, bytes | None]] = [(TARGET_GROUP, b"g")]
        assert decode("t", "t", 0, 1, None, b"", headers, stamp, defer=True) == (None, "g", None)
        message, _, _ = _decode(headers, stamp)
        assert message is not None
        assert abs(message.timestamp - datetime.now(UTC)) < timedelta(seconds=5)
    message, _, _ = decode("t", "t", 0, 1, None, b"", [], 0, defer=True)
    assert message is not None and message.timestamp == datetime.fromtimestamp(0, UTC)
