"""Message <-> Kafka record, as CloudEvents in binary content mode (DESIGN 4).

The CloudEvents attributes travel as ``ce_*`` headers plus ``content-type``; the application's
headers go as they are (UTF-8) and the key is the record key. Records from producers that do not
use eventbus (no ``ce_id``) are still read: their id is ``topic/partition/offset``, their
timestamp the record's, and headers that are not UTF-8 are read as Latin-1 so nothing crashes.

Two routing headers are this adapter's own business (the core never sees them): a record
republished for one group (a retry through the broker, a dead-letter replay) names it in
``eventbus-target-group``, and a delayed one carries its due time in ``eventbus-not-before``.
They are written from the `Destination` only and stripped from every message read, so a
handler that republishes what it got cannot make other groups skip it, and a dead letter built
from it does not carry them. Their names are fixed: 0.1 workers in the same group read them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from eventbus.message import Message, new_message
from eventbus.transports.cloudevents import SOURCE, SPEC_VERSION, format_time, parse_time

__all__ = [
    "NOT_BEFORE",
    "REPLY_TO",
    "TARGET_GROUP",
    "KafkaRecord",
    "decode",
    "decode_text",
    "from_record",
    "routing",
    "to_record",
]

TARGET_GROUP = "eventbus-target-group"
"""On a record meant for one group of its topic only: that group's name."""
NOT_BEFORE = "eventbus-not-before"
"""On a delayed record: the Unix time (seconds, text) before which it is not handed out."""
REPLY_TO = "eventbus-reply-to"
"""`Message.reply_to`: the queue a reply goes to (no CloudEvents attribute exists for it)."""
_ROUTING = frozenset({TARGET_GROUP, NOT_BEFORE})

CE_ID = "ce_id"
CE_TYPE = "ce_type"
CE_SOURCE = "ce_source"
CE_SPECVERSION = "ce_specversion"
CE_TIME = "ce_time"
CE_CORRELATION_ID = "ce_correlationid"
CONTENT_TYPE = "content-type"

# Attributes that map onto Message fields; ce_source is kept as a header when it is foreign.
_ENVELOPE = frozenset(
    {CE_ID, CE_TYPE, CE_SPECVERSION, CE_TIME, CE_CORRELATION_ID, CONTENT_TYPE, REPLY_TO}
)


class KafkaRecord(NamedTuple):
    """What the producer sends: ``value`` is never None (eventbus does not write tombstones).

    A named tuple rather than a frozen dataclass: one is built per published message, and a
    frozen dataclass's ``__init__`` costs several times a tuple's."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def decode_text(raw: bytes | None) -> str:
    """Lenient UTF-8: a foreign producer's bytes become Latin-1 text rather than an error."""
    if raw is None:
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_SOURCE_HEADER = (CE_SOURCE, SOURCE.encode("ascii"))
_SPEC_HEADER = (CE_SPECVERSION, SPEC_VERSION.encode("ascii"))
_NOT_APPLICATION = _ENVELOPE | _ROUTING | {CE_SOURCE}


def to_record(
    message: Message, *, target_group: str | None = None, not_before: float | None = None
) -> KafkaRecord:
    """The record for ``message``. Routing headers come from the arguments only (from the
    `Destination`): copies of them among the message's headers are dropped."""
    app = message.headers
    if app:
        headers: list[tuple[str, bytes]] = [
            (name, value.encode("utf-8"))
            for name, value in app.items()
            if name not in _NOT_APPLICATION
        ]
        source = app.get(CE_SOURCE)
    else:
        headers = []
        source = None
    headers.append((CE_ID, message.id.encode("utf-8")))
    headers.append(_SOURCE_HEADER if source is None else (CE_SOURCE, source.encode("utf-8")))
    headers.append(_SPEC_HEADER)
    headers.append((CE_TIME, format_time(message.timestamp).encode("ascii")))
    if message.type is not None:
        headers.append((CE_TYPE, message.type.encode("utf-8")))
    if message.content_type is not None:
        headers.append((CONTENT_TYPE, message.content_type.encode("utf-8")))
    if message.correlation_id is not None:
        headers.append((CE_CORRELATION_ID, message.correlation_id.encode("utf-8")))
    if message.reply_to is not None:
        headers.append((REPLY_TO, message.reply_to.encode("utf-8")))
    if target_group is not None:
        headers.append((TARGET_GROUP, target_group.encode("utf-8")))
    if not_before is not None:
        headers.append((NOT_BEFORE, f"{not_before:.3f}".encode("ascii")))
    key = message.key.encode("utf-8") if message.key is not None else None
    return KafkaRecord(key, message.body, headers)


def from_record(
    *,
    topic: str,
    record_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
    timestamp_ms: int | None,
) -> Message:
    """Decode one consumed record. ``topic`` is the eventbus topic or queue the subscription
    reads (a record read from its retry topic still belongs to it); ``record_topic`` is the
    Kafka topic it came from, used for the id of foreign records. Routing headers are left
    out (see `routing` for reading them)."""
    message, _, _ = decode(
        topic, record_topic, partition, offset, key, value, headers, timestamp_ms
    )
    assert message is not None  # only a deferred decode leaves it out
    return message


# What `decode` does with a header, by name; any other name is an application header.
_ID, _TYPE, _CORRELATION_ID, _CONTENT_TYPE, _REPLY_TO, _TIME, _SPEC, _SOURCE = range(8)
_TARGET, _NOT_BEFORE = range(8, 10)
_KINDS: dict[str, int] = {
    CE_ID: _ID,
    CE_TYPE: _TYPE,
    CE_CORRELATION_ID: _CORRELATION_ID,
    CONTENT_TYPE: _CONTENT_TYPE,
    REPLY_TO: _REPLY_TO,
    CE_TIME: _TIME,
    CE_SPECVERSION: _SPEC,
    CE_SOURCE: _SOURCE,
    TARGET_GROUP: _TARGET,
    NOT_BEFORE: _NOT_BEFORE,
}
_OUR_SOURCE = SOURCE.encode("ascii")


def decode(
    topic: str,
    record_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | None,
    timestamp_ms: int | None,
    *,
    defer: bool = False,
) -> tuple[Message | None, str | None, float | None]:
    """`from_record` and `routing` in one pass over the headers: the message, the target group
    and the due time. The fetch loop calls it for every record, so it is written for speed:
    one dict lookup per header, no decoding of headers whose text is not used, the CloudEvents
    time parsed once per distinct value (`_ce_time`).

    With ``defer``, a record whose only time is when it is read (no usable ``ce_time`` nor
    record timestamp) gets no message (None): the caller decodes it when it hands it out."""
    app: dict[str, str] = {}
    found: list[str | None] = [None, None, None, None, None]  # _ID .. _REPLY_TO, last wins
    raw_time: bytes | None = None
    target: str | None = None
    due: float | None = None
    if headers:
        kinds = _KINDS
        for name, raw in headers:
            kind = kinds.get(name)
            if kind is None or kind < _TIME:
                # `decode_text` inlined: this runs for most headers of every record.
                if raw is None:
                    text = ""
                else:
                    try:
                        text = raw.decode()
                    except UnicodeDecodeError:
                        text = raw.decode("latin-1")
                if kind is None:
                    app[name] = text  # duplicate names: the last one wins, as in most clients
                else:
                    found[kind] = text
            elif kind == _TIME:
                raw_time = raw  # parsed (or found in the cache) once all are read
            elif kind == _SPEC:
                continue  # always ours to write; not kept
            elif kind == _SOURCE:
                if raw != _OUR_SOURCE:  # a foreign source is kept so it survives a round trip
                    app[name] = decode_text(raw)
            elif kind == _TARGET:  # routing headers: for this hop only (module docstring)
                target = decode_text(raw) or None
            elif raw:
                due = _due(raw, due)

    timestamp = _ce_time(raw_time) if raw_time is not None else None
    if timestamp is None:
        timestamp = _timestamp(timestamp_ms)
        if timestamp is None:
            if defer:
                return None, target, due
            timestamp = datetime.now(UTC)
    if key is not None:
        try:
            text_key: str | None = key.decode()
        except UnicodeDecodeError:
            text_key = key.decode("latin-1")
    else:
        text_key = None
    message = new_message(
        found[_ID] or f"{record_topic}/{partition}/{offset}",
        topic,
        value if value is not None else b"",
        text_key,
        app,
        found[_CONTENT_TYPE],
        found[_TYPE],
        timestamp,
        found[_CORRELATION_ID],
        found[_REPLY_TO] or None,
    )
    return message, target, due


def _due(raw: bytes, due: float | None) -> float | None:
    """The due time after a ``NOT_BEFORE`` header: ``due`` (the previous one) when this one
    does not parse, None when it is not finite (a due time that does not parse counts as due:
    it must not hold its partition forever)."""
    try:
        value = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return due
    return value if math.isfinite(value) else None


_last_ce_time: tuple[bytes | None, datetime | None] = (None, None)
"""The last ``ce_time`` read and its value: the records of one ``publish_many`` share it."""


def _ce_time(raw: bytes) -> datetime | None:
    """`parse_time` of a ``ce_time`` header, None when it is unreadable."""
    global _last_ce_time
    last = _last_ce_time  # one read: another thread may replace it, never tear it
    if raw == last[0]:
        return last[1]
    try:  # what eventbus writes (`format_time`): RFC 3339 in UTC, read as it is
        moment: datetime | None = datetime.fromisoformat(raw.decode())
    except (UnicodeDecodeError, ValueError):
        moment = None
    if moment is None or moment.tzinfo is not UTC:
        moment = parse_time(decode_text(raw))  # another zone, no zone, spaces, not a time
    _last_ce_time = (raw, moment)
    return moment


def record_time(timestamp_ms: int | None) -> datetime:
    """A record's Kafka timestamp as a datetime; now when it has none, or one a datetime
    cannot hold (negative, or past year 9999: a topic whose ``message.timestamp.after.max.ms``
    was raised accepts any)."""
    moment = _timestamp(timestamp_ms)
    return datetime.now(UTC) if moment is None else moment


def _timestamp(timestamp_ms: int | None) -> datetime | None:
    """`record_time`, None rather than now."""
    global _last_record_time
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    last = _last_record_time  # the records of one producer batch often share a millisecond
    if last[0] == timestamp_ms:
        return last[1]
    try:
        moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return None
    _last_record_time = (timestamp_ms, moment)
    return moment


_last_record_time: tuple[int, datetime] = (-1, datetime.fromtimestamp(0, UTC))


def routing(headers: Iterable[tuple[str, bytes | None]]) -> tuple[str | None, float | None]:
    """A consumed record's target group and due time (Unix seconds), each None when absent.
    A due time that does not parse counts as due: it must not hold its partition forever."""
    target: str | None = None
    due: float | None = None
    for name, raw in headers:
        if name == TARGET_GROUP:
            target = decode_text(raw) or None
        elif name == NOT_BEFORE and raw:
            due = _due(raw, due)
    return target, due
