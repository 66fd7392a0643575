"""Where a handler's return value goes (DESIGN 12).

With a reply-to on the message, the value is the reply and nothing else (sent to that queue);
without one, it is published to the handler's declared destination (``publish_to=`` /
``send_to=``), if any. ``None`` publishes nothing. Either way it is published before the message
is acked, so a failed publish is a failed attempt, retried like any other: the handler's output
is at least once, like its input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from eventbus.message import Message
from eventbus.transports.base import Destination

__all__ = ["PublishResult", "destination_for"]

PublishResult = Callable[[Destination, object, Message], Awaitable[None]]
"""``(to, value, cause)``: the bus's publish for return values (correlation and causation ids
come from the message being handled, DESIGN 9)."""


def destination_for(cause: Message, declared: Destination | None) -> Destination | None:
    if cause.reply_to is not None:
        return Destination(cause.reply_to, "queue")
    return declared
