"""`Message` <-> AMQP 0-9-1 properties and headers (DESIGN 4, CloudEvents binary mode).

CloudEvents attributes with a native AMQP property travel there (``message_id``, ``type``,
``timestamp``, ``content_type``, ``correlation_id``); the others as ``cloudEvents_*`` headers.
The reply address (request-reply) is the native ``reply_to`` property, as other AMQP clients
expect it.
``timestamp`` is whole seconds on the wire, so the exact time also goes in ``cloudEvents_time``.
The key goes in the ``eventbus-key`` header (the routing key may be a hash of it, or the id).

Decoding never fails on what a foreign producer sends: header values of any AMQP type become
text, and a message without ``message_id`` gets a random id for each delivery (see
`_random_id`: two identical commands are not duplicates).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pamqp.commands import Basic

from eventbus.headers import DATASCHEMA
from eventbus.loggers import get_logger
from eventbus.message import Message, new_message_id
from eventbus.transports import cloudevents
from eventbus_rabbitmq.frames import Unreadable

log = get_logger("eventbus.rabbitmq")

__all__ = ["KEY_HEADER", "amqp_message_id", "decode", "encode", "routing_key"]

KEY_HEADER = "eventbus-key"
SPECVERSION = "cloudEvents_specversion"
SOURCE = "cloudEvents_source"
TIME = "cloudEvents_time"
# Used only when the value is too long for its AMQP property (a 255-byte short string).
_CE_ID = "cloudEvents_id"
_CE_TYPE = "cloudEvents_type"
_CE_CORRELATION = "cloudEvents_correlationid"
_CE_DATASCHEMA = "cloudEvents_dataschema"
_REPLY_TO = "eventbus-reply-to"
_PERSISTENT = 2
_MAX_SHORTSTR = 255

# Headers RabbitMQ adds (dead-lettering through delay queues, quorum redeliveries): facts about
# one hop, not part of the message; left out so they do not pile up on every retry.
_BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")
_ROUTED_BY_0_1 = frozenset({"eventbus-target-group", "eventbus-not-before"})
"""Written on retries by eventbus 0.1 workers (routing is by exchange here, so they mean
nothing to this adapter); dropped on read so that during a rolling upgrade no 0.2 handler or
dead letter sees them, and a handler republishing what it got cannot make 0.1 groups skip it."""
_OURS = frozenset(
    {KEY_HEADER, SPECVERSION, SOURCE, TIME, _CE_ID, _CE_TYPE, _CE_CORRELATION, _REPLY_TO}
    | _ROUTED_BY_0_1
)


def routing_key(message: Message) -> str:
    """The routing key a topic publish uses: the key (so hashing keeps a key on one
    partition), else the id (spreads keyless messages). Longer than AMQP's 255-byte limit:
    a digest of it, stable for the same key."""
    value = message.key if message.key is not None else message.id
    return _short(value)


def amqp_message_id(message: Message) -> str:
    """The ``message_id`` property `encode` gives ``message``."""
    return _short(message.id)


def _short(value: str) -> str:
    if len(value.encode()) > _MAX_SHORTSTR:
        return hashlib.sha256(value.encode()).hexdigest()
    return value


def _property(headers: dict[str, Any], header: str, value: str | None) -> str | None:
    """``value`` for a short-string property; a too long one goes whole in ``header``."""
    if value is None or len(value.encode()) <= _MAX_SHORTSTR:
        return value
    headers[header] = value
    return _short(value)


def encode(message: Message, *, expiration_ms: int | None = None) -> Basic.Properties:
    headers: dict[str, Any] = dict(message.headers)
    dataschema = headers.pop(DATASCHEMA, None)
    if dataschema is not None:
        headers[_CE_DATASCHEMA] = dataschema
    headers[SPECVERSION] = cloudevents.SPEC_VERSION
    headers.setdefault(SOURCE, cloudevents.SOURCE)
    headers[TIME] = cloudevents.format_time(message.timestamp)
    if message.key is not None:
        headers[KEY_HEADER] = message.key
    return Basic.Properties(
        message_id=_property(headers, _CE_ID, message.id),
        message_type=_property(headers, _CE_TYPE, message.type),
        timestamp=message.timestamp,
        content_type=message.content_type,
        correlation_id=_property(headers, _CE_CORRELATION, message.correlation_id),
        reply_to=_property(headers, _REPLY_TO, message.reply_to),
        delivery_mode=_PERSISTENT,
        expiration=str(expiration_ms) if expiration_ms is not None else None,
        headers=headers,
    )


def defect_of(properties: Basic.Properties) -> str | None:
    """What of a delivery's properties could not be read (see `frames`), or None."""
    unreadable = [
        f"header {name!r}"
        for name, value in (properties.headers or {}).items()
        if isinstance(value, Unreadable)
    ]
    if isinstance(properties.timestamp, Unreadable):
        unreadable.insert(0, "the timestamp property")
    if not unreadable:
        return None
    return f"{', '.join(unreadable)}: a timestamp out of range"


def decode(
    topic: str, body: bytes, properties: Basic.Properties, *, exchange: str, routing_key: str
) -> Message:
    raw = dict(properties.headers or {})
    headers = {
        str(name): text(value)
        for name, value in raw.items()
        if name not in _OURS and not str(name).startswith(_BROKER_HEADER_PREFIXES)
    }
    if _CE_DATASCHEMA in headers:
        headers[DATASCHEMA] = headers.pop(_CE_DATASCHEMA)
    foreign = SPECVERSION not in raw
    key = _optional_text(raw.get(KEY_HEADER))
    if key is None and foreign and exchange and routing_key:
        # A producer that does not know eventbus keys by routing key, like we do.
        key = routing_key
    message_id = _optional_text(raw.get(_CE_ID)) or properties.message_id
    if not message_id:
        message_id = _random_id()
    return Message(
        id=message_id,
        topic=topic,
        body=body,
        key=key,
        headers=headers,
        content_type=properties.content_type,
        type=_optional_text(raw.get(_CE_TYPE)) or properties.message_type,
        timestamp=_timestamp(raw.get(TIME), properties.timestamp),
        correlation_id=_optional_text(raw.get(_CE_CORRELATION)) or properties.correlation_id,
        reply_to=_optional_text(raw.get(_REPLY_TO)) or properties.reply_to or None,
    )


def text(value: Any) -> str:
    """Any AMQP field value as text (headers of foreign messages can be of every type)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return cloudevents.format_time(value)
    if isinstance(value, int | float | Decimal) or value is None:
        return str(value)
    return json.dumps(value, default=text, ensure_ascii=False, sort_keys=True)


def _optional_text(value: Any) -> str | None:
    return None if value is None else text(value)


def _timestamp(header: Any, native: datetime | None) -> datetime:
    if header is not None:
        parsed = cloudevents.parse_time(text(header))
        if parsed is not None:
            return parsed
    if native is not None:
        return native if native.tzinfo else native.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _random_id() -> str:
    """An id for a message that came without one (DESIGN 4): random for each delivery. No
    stable id exists -- two identical commands are not duplicates, so an id derived from the
    content would make deduplication skip the second -- and so such messages are not
    deduplicated (a ``dedup_key`` still works). Counted, and warned about once."""
    global ids_made_up
    ids_made_up += 1
    if ids_made_up == 1:
        log.warning(
            "a RabbitMQ message without message_id was consumed: it gets a random id for each "
            "delivery and is not deduplicated unless the handler has a dedup_key"
        )
    return "amqp-" + new_message_id()


ids_made_up = 0
"""Messages consumed by this process without a ``message_id`` (see `_random_id`)."""
