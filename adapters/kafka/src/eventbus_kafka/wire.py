"""Message <-> Kafka record, as CloudEvents in binary content mode (DESIGN 4).

The CloudEvents attributes travel as ``ce_*`` headers plus ``content-type``; the application's
headers go as they are (UTF-8) and the key is the record key. Records from producers that do not
use eventbus (no ``ce_id``) are still read: their id is ``topic/partition/offset``, their
timestamp the record's, and headers that are not UTF-8 are read as Latin-1 so nothing crashes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from eventbus.headers import NOT_BEFORE
from eventbus.message import Message

__all__ = [
    "KafkaRecord",
    "decode_text",
    "format_time",
    "from_record",
    "not_before",
    "to_record",
]

CE_ID = "ce_id"
CE_TYPE = "ce_type"
CE_SOURCE = "ce_source"
CE_SPECVERSION = "ce_specversion"
CE_TIME = "ce_time"
CE_CORRELATION_ID = "ce_correlationid"
CONTENT_TYPE = "content-type"
SOURCE = "eventbus"
SPEC_VERSION = "1.0"

# Attributes that map onto Message fields; ce_source is kept as a header when it is foreign.
_ENVELOPE = frozenset({CE_ID, CE_TYPE, CE_SPECVERSION, CE_TIME, CE_CORRELATION_ID, CONTENT_TYPE})


class KafkaRecord(NamedTuple):
    """What the producer sends: ``value`` is never None (eventbus does not write tombstones).

    A named tuple rather than a frozen dataclass: one is built per published message, and a
    frozen dataclass's ``__init__`` costs several times a tuple's."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


_last_time: tuple[datetime | None, str] = (None, "")
"""The last `format_time` result: the messages of one ``publish_many`` share a timestamp."""


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as CloudEvents writers usually emit it."""
    global _last_time
    last = _last_time  # one read: another thread may replace it, never tear it
    if last[0] == moment:  # the same instant: the same text (a naive one never equals an aware)
        return last[1]
    if moment.tzinfo is None:
        utc = moment.replace(tzinfo=UTC)
    elif moment.tzinfo is not UTC:
        utc = moment.astimezone(UTC)
    else:
        utc = moment
    # isoformat of a UTC datetime always ends with "+00:00"
    text = utc.isoformat(timespec="microseconds")[:-6] + "Z"
    _last_time = (moment, text)
    return text


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is UTC:  # what eventbus writes ("Z"): nothing to convert
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
_NOT_APPLICATION = _ENVELOPE | {CE_SOURCE}


def to_record(message: Message) -> KafkaRecord:
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
    Kafka topic it came from, used for the id of foreign records."""
    attributes: dict[str, str] = {}
    app_headers: dict[str, str] = {}
    for name, raw in headers:
        # `decode_text` inlined: this runs for every header of every record.
        if raw is None:
            text = ""
        else:
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
        if name in _ENVELOPE:
            attributes[name] = text
        elif name == CE_SOURCE and text == SOURCE:
            continue  # our own marker; a foreign source is kept so it survives a round trip
        else:
            app_headers[name] = text  # duplicate names: the last one wins, as in most clients

    ce_time = attributes.get(CE_TIME)
    timestamp = _parse_time(ce_time) if ce_time is not None else None
    if timestamp is None:
        timestamp = (
            datetime.fromtimestamp(timestamp_ms / 1000, UTC)
            if timestamp_ms is not None and timestamp_ms >= 0
            else datetime.now(UTC)
        )
    return Message(
        id=attributes.get(CE_ID) or f"{record_topic}/{partition}/{offset}",
        topic=topic,
        body=value if value is not None else b"",
        key=decode_text(key) if key is not None else None,
        headers=app_headers,
        content_type=attributes.get(CONTENT_TYPE),
        type=attributes.get(CE_TYPE),
        timestamp=timestamp,
        correlation_id=attributes.get(CE_CORRELATION_ID),
    )


def not_before(headers: Iterable[tuple[str, bytes | None]]) -> float | None:
    """The unix time a delayed record is due (header ``eventbus-not-before``), if it has a
    readable one; a malformed value counts as due."""
    for name, raw in headers:
        if name == NOT_BEFORE and raw:
            try:
                value = float(raw.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return None
            return value if math.isfinite(value) else None
    return None
