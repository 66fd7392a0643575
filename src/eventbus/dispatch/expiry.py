"""Message expiry (DESIGN 11): ``publish(..., ttl=)`` / ``expires_at=`` and the consumer's check.

The deadline travels in the ``eventbus-expires-at`` header as Unix time in seconds (a decimal
number, UTC by definition): one ``float()`` to read, no time zone to get wrong, and the same on
every transport. It is never AMQP's ``expiration``, which makes RabbitMQ drop a message
silently; here the consumer decides, so an expired message is dead-lettered (``expired``) or,
with ``on_expired="drop"``, acked unhandled and counted.

The consumer checks before every attempt: before decoding a delivery (a redelivery through the
broker is a new delivery, checked again) and before each in-process retry. A message without
the header costs the runner one ``in`` test per delivery; the header is parsed only when
present. The deadline is
compared with this process's wall clock, so clock skew between producer and consumer shifts it.

A header that is not a finite number cannot have come from eventbus (the ``eventbus-`` prefix is
refused in application headers): like an undecodable body, the message is dead-lettered as
``undecodable`` (`ExpiryHeaderError`), since every attempt would read it the same way and
handling it might act on stale data. ``eventbus dlq replay`` removes the header, so a replayed
message is handled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from eventbus import headers as h
from eventbus.dispatch.outcome import DeadLetter
from eventbus.dispatch.settle import DeliveryState
from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import ConfigurationError
from eventbus.loggers import get_logger

__all__ = [
    "ExpiredError",
    "ExpiryHeaderError",
    "describe",
    "expired",
    "expiry_header",
    "settled_expired",
]

log = get_logger("eventbus.dispatch")


class ExpiredError(Exception):
    """Stands for the cause of an ``expired`` dead letter: no attempt ran."""


class ExpiryHeaderError(ValueError):
    """The ``eventbus-expires-at`` header is not a finite number of seconds: the message is
    dead-lettered as ``undecodable``."""


def expiry_header(
    ttl: float | None, expires_at: datetime | None, due: float | None = None
) -> str | None:
    """The ``eventbus-expires-at`` value for a publish, or None without an expiry. ``ttl``:
    seconds from when the message is due (``due``, the Unix time of a scheduled publish;
    else now), finite and > 0: a scheduled message gets its whole ttl once it falls due.
    ``expires_at``: an aware datetime (one in the past is allowed: the message is then
    expired when it arrives)."""
    if ttl is None and expires_at is None:
        return None
    if ttl is not None and expires_at is not None:
        raise ConfigurationError("give ttl (seconds) or expires_at (a datetime), not both")
    if ttl is not None:
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not math.isfinite(ttl)
            or ttl <= 0
        ):
            raise ConfigurationError(f"ttl must be > 0 seconds (finite), got {ttl!r}")
        deadline = (time.time() if due is None else max(due, time.time())) + ttl
    else:
        if not isinstance(expires_at, datetime):
            raise ConfigurationError(f"expires_at must be a datetime, got {expires_at!r}")
        if expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise ConfigurationError(
                f"expires_at must be time-zone aware (e.g. datetime.now(UTC) + ...), got naive "
                f"{expires_at.isoformat()}"
            )
        deadline = expires_at.timestamp()
    return f"{deadline:.3f}"


def expired(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The deadline (Unix seconds) when the message carries one that has passed, else None.
    Raises `ExpiryHeaderError` on a header that is not a finite number."""
    value = headers.get(h.EXPIRES_AT)
    if value is None:
        return None  # the usual case: one lookup, nothing parsed
    try:
        deadline = float(value)
    except ValueError:
        deadline = math.nan
    if not math.isfinite(deadline):
        raise ExpiryHeaderError(
            f"{h.EXPIRES_AT} header {value[:100]!r} is not a finite Unix time in seconds"
        )
    if deadline > (time.time() if now is None else now):
        return None
    return deadline


def describe(deadline: float) -> str:
    """The deadline for a log line or an error message."""
    try:
        return datetime.fromtimestamp(deadline, UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # far outside datetime's years
        return f"{deadline:.3f} (Unix time)"


async def settled_expired(sub: Subscriber, state: DeliveryState) -> bool:
    """Before an attempt: settle the message and return True if it is past its expiry (or its
    expiry header is unreadable); otherwise False, having changed nothing."""
    message = state.raw.message
    try:
        deadline = expired(message.headers)
    except ExpiryHeaderError as exc:
        log.error("%s: unreadable expiry on %s: %s", sub.describe(), message.id, exc)
        await state.carry_out(DeadLetter("undecodable"), exc)
        return True
    if deadline is None:
        return False
    sub.stats.expired += 1
    # An expired request's requester gave up long ago (it expires after the request's
    # timeout): nobody needs it dead-lettered or answered.
    if sub.options.on_expired == "drop" or message.reply_to is not None:
        log.info("%s: dropping %s, expired at %s", sub.describe(), message.id, describe(deadline))
        await state.ack(tell="expired")
        return True
    error = ExpiredError(f"expired at {describe(deadline)} before attempt {state.attempt}")
    await state.carry_out(DeadLetter("expired"), error)
    return True
