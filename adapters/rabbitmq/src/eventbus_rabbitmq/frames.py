"""Frames a foreign producer can write that the AMQP client library cannot read.

pamqp decodes an AMQP ``timestamp`` (in the message properties or in a header table) into a
`datetime`; one out of `datetime`'s range (a producer writing nanoseconds, say) raises inside
aiormq's frame reader, which drops the whole connection -- every subscription on it -- and the
message comes back at the head of its queue, so the connection fails again in a tight loop.
`install` makes that one value decode to `UNREADABLE` instead, so the delivery reaches the
adapter, which hands it to the core with a defect (dead-lettered as undecodable) while the
connection and the other subscriptions carry on.

pamqp's decoder table is global; replacing one entry changes nothing else: values in range
decode exactly as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime

from pamqp import common, decode

__all__ = ["UNREADABLE", "Unreadable", "install"]


class Unreadable(datetime):
    """A timestamp the frame held but `datetime` cannot represent."""


UNREADABLE = Unreadable(1970, 1, 1, tzinfo=UTC)


def _timestamp(value: bytes) -> tuple[int, datetime]:
    try:
        seconds: float = common.Struct.timestamp.unpack(value[0:8])[0]
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack timestamp value") from err
    if seconds > 0xFFFFFFFF:  # as pamqp reads it: above the year 2106, milliseconds
        seconds /= 1000.0
    try:
        return 8, datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return 8, UNREADABLE


def install() -> None:
    """Idempotent: route pamqp's ``timestamp`` decoding through the tolerant decoder."""
    tolerant: Callable[[bytes], tuple[int, datetime]] = _timestamp
    decode.METHODS["timestamp"] = tolerant
    decode.TABLE_MAPPING[b"T"] = tolerant
