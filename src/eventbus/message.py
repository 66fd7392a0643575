"""`Message` (what travels) and `Delivery` (one attempt at handling it)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Delivery", "Message", "new_message", "new_message_id"]


_COUNTER_BITS = 48
_COUNTER_LIMIT = 1 << _COUNTER_BITS


class _IdSource:
    """Message ids: a random per-process prefix plus a counter.

    A fresh ``uuid4()`` per message costs an ``os.urandom`` call and a UUID object (about 5 us,
    a sixth of a small Kafka ``publish_many``). Here the first 80 bits of a version-4 UUID are
    drawn once (74 random bits) and the last 48 bits count from a random start (47 random
    bits), so every id is still a valid UUID string, and two processes collide only if they
    draw the same prefix *and* overlapping counter ranges. The prefix and start are drawn again
    after a fork (a child must not repeat its parent's ids) and when the counter wraps."""

    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.prefix = ""
        self.counter: itertools.count[int] = itertools.count()
        self.reseed()

    def reseed(self) -> None:
        self.prefix = str(uuid.uuid4())[:23]  # "xxxxxxxx-xxxx-4xxx-yxxx", version and variant
        start = int.from_bytes(os.urandom(6)) >> 1  # at least 2**47 ids before a wrap
        self.counter = itertools.count(start)

    def next(self) -> str:
        n = next(self.counter)  # atomic under the GIL: safe from several threads
        if n >= _COUNTER_LIMIT:
            self.reseed()
            n = next(self.counter)
        return f"{self.prefix}-{n:012x}"


_ids = _IdSource()
os.register_at_fork(after_in_child=_ids.reseed)


def new_message_id() -> str:
    """A globally unique message id (a UUID string); cheap enough to call per message."""
    return _ids.next()


@dataclass(frozen=True, slots=True)
class Message:
    """A message as it travels: an envelope (CloudEvents attributes) around an encoded body.

    ``topic`` is the topic or queue it was published to. ``headers`` are the application's plus
    eventbus's own (``eventbus-*``); values are text. ``timestamp`` is when it was first
    published (UTC).
    """

    id: str
    topic: str
    body: bytes
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None
    type: str | None = None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    reply_to: str | None = None
    """Where a reply to this message goes (a queue name), for request-reply."""

    def with_headers(self, **changes: str) -> Message:
        """A copy with ``changes`` merged into the headers (names with dashes: pass a dict)."""
        return self.replace_headers({**self.headers, **changes})

    def replace_headers(self, headers: Mapping[str, str]) -> Message:
        return Message(
            id=self.id,
            topic=self.topic,
            body=self.body,
            key=self.key,
            headers=dict(headers),
            content_type=self.content_type,
            type=self.type,
            timestamp=self.timestamp,
            correlation_id=self.correlation_id,
            reply_to=self.reply_to,
        )


def _message_factory() -> Callable[
    [
        str,
        str,
        bytes,
        str | None,
        dict[str, str],
        str | None,
        str | None,
        datetime,
        str | None,
        str | None,
    ],
    Message,
]:
    """``Message(...)`` with every field given, positionally, at about half the cost: for a
    transport that builds one per consumed record (the Kafka adapter).

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; setting
    the slots directly builds the very same object. Only while `Message` is what this was
    written for (these fields, in this order, slots, no ``__post_init__``); otherwise its own
    constructor is used."""
    names = (
        *("id", "topic", "body", "key", "headers", "content_type", "type", "timestamp"),
        *("correlation_id", "reply_to"),
    )
    slots = getattr(Message, "__slots__", ())
    if (
        tuple(f.name for f in dataclasses.fields(Message)) != names
        or tuple(slots) != names
        or hasattr(Message, "__post_init__")
    ):
        return Message
    setters = [vars(Message)[name].__set__ for name in names]
    (set_id, set_topic, set_body, set_key, set_headers) = setters[:5]
    (set_content_type, set_type, set_timestamp, set_correlation_id, set_reply_to) = setters[5:]
    new = object.__new__

    def new_message(
        id: str,
        topic: str,
        body: bytes,
        key: str | None,
        headers: dict[str, str],
        content_type: str | None,
        type: str | None,
        timestamp: datetime,
        correlation_id: str | None,
        reply_to: str | None,
    ) -> Message:
        message: Message = new(Message)
        set_id(message, id)
        set_topic(message, topic)
        set_body(message, body)
        set_key(message, key)
        set_headers(message, headers)
        set_content_type(message, content_type)
        set_type(message, type)
        set_timestamp(message, timestamp)
        set_correlation_id(message, correlation_id)
        set_reply_to(message, reply_to)
        return message

    return new_message


new_message = _message_factory()


class _Settler(Protocol):
    """What a `Delivery` delegates to: the dispatcher that owns it."""

    async def ack(self) -> None: ...
    async def nack(self, delay: float | None) -> None: ...
    async def reject(self, reason: str | None) -> None: ...
    @property
    def settled(self) -> bool: ...


class Delivery:
    """One attempt at handling a `Message`; inject it by annotating a handler parameter.

    Settling is idempotent: the first of ``ack``/``nack``/``reject`` wins and later calls are
    no-ops, so code may settle defensively. In ``ack="auto"`` mode the runtime settles when the
    handler returns or raises, unless the handler settled first. In ``ack="manual"`` mode the
    delivery may be handed to other tasks and settled after the handler returned; until then it
    counts against ``max_in_flight``, and after ``ack_timeout`` it is redelivered.

    Safe to call from any task of the event loop that runs the bus; not thread-safe.
    """

    __slots__ = ("_settler", "attempt", "message", "payload", "redelivered")

    def __init__(
        self,
        message: Message,
        *,
        attempt: int,
        redelivered: bool,
        settler: _Settler,
        payload: object = None,
    ) -> None:
        self.message = message
        self.payload = payload
        """The decoded body: what the handler's payload parameter gets (for middleware)."""
        self.attempt = attempt
        """1-based: 1 on first delivery, incremented on each retry, whichever process runs it."""
        self.redelivered = redelivered
        """True when the broker may have delivered this message before (e.g. after a crash)."""
        self._settler = settler

    @property
    def settled(self) -> bool:
        return self._settler.settled

    async def ack(self) -> None:
        """Done: the message will not be delivered to this group again."""
        await self._settler.ack()

    async def nack(self, delay: float | None = None) -> None:
        """Failed this attempt: deliver again through the broker after ``delay`` seconds, or
        after the retry policy's backoff when None.

        Counts as an attempt: once the retry policy's attempts are spent the message is
        dead-lettered instead. Raises ``ValueError`` for a negative or non-finite delay.
        """
        if delay is not None and not (0 <= delay < math.inf):
            raise ValueError(f"nack delay must be a finite number of seconds >= 0, got {delay!r}")
        await self._settler.nack(delay)

    async def reject(self, reason: str | None = None) -> None:
        """Give up: send the message to the dead-letter destination now."""
        await self._settler.reject(reason)

    def __repr__(self) -> str:
        m = self.message
        return f"<Delivery {m.topic} id={m.id} key={m.key} attempt={self.attempt}>"
