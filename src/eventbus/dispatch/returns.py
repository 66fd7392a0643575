"""Where a handler's return value goes (DESIGN 12), and the reply to a request that failed.

With a reply-to on the message, the value is the reply and nothing else (sent to that reply
address, ``None`` included: the requester waits for an answer); without one, it is published to
the handler's declared destination (``publish_to=`` / ``send_to=``), if any, and ``None``
publishes nothing. Either way it is published before the message is acked, so a failed publish
is a failed attempt, retried like any other: the handler's output is at least once, like its
input.

A request that is dead-lettered (its handler gave up, or it was undecodable, expired or
rejected) is answered with `error_reply`: no body, the error's type and message in the
dead-letter headers, so that the requester raises `eventbus.ResponderError` at once instead of
waiting out its timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from eventbus import headers as h
from eventbus.message import Message, new_message_id
from eventbus.transports.base import Destination

__all__ = ["PublishResult", "destination_for", "error_reply"]

_ERROR_MESSAGE_LIMIT = 2000
"""Characters of the responder's error message sent back to the requester."""

PublishResult = Callable[[Destination, object, Message], Awaitable[None]]
"""``(to, value, cause)``: the bus's publish for return values (correlation and causation ids
come from the message being handled, DESIGN 9)."""


def destination_for(cause: Message, declared: Destination | None) -> Destination | None:
    if cause.reply_to is not None:
        return Destination(cause.reply_to, "queue", reply=True)
    return declared


def error_reply(cause: Message, reason: str, error: BaseException) -> tuple[Destination, Message]:
    """Where and what to answer a request ``cause`` that was dead-lettered for ``reason``."""
    assert cause.reply_to is not None
    reply = Message(
        id=new_message_id(),
        topic=cause.reply_to,
        body=b"",
        key=cause.key,
        headers={
            h.DLQ_REASON: reason,
            h.ERROR_TYPE: type(error).__name__,
            h.ERROR_MESSAGE: str(error)[:_ERROR_MESSAGE_LIMIT],
            h.CAUSATION_ID: cause.id,
        },
        timestamp=datetime.now(UTC),
        correlation_id=cause.correlation_id or cause.id,
    )
    return Destination(cause.reply_to, "queue", reply=True), reply
