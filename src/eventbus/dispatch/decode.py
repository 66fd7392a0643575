"""Decoding a body into the handler's payload type (DESIGN 3.4, 8).

Any error of any type from the codec makes the message a poison message: it is dead-lettered
as ``undecodable``, since another attempt would decode the same bytes the same way. Only a
`BrokerUnavailableError` from an asynchronous codec (its schema registry is down) is not the
message's fault: decoding waits and tries again, spending no attempt, like a dedup-store
outage.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

from eventbus.codecs.base import AsyncCodec, Codec
from eventbus.errors import BrokerUnavailableError
from eventbus.loggers import get_logger
from eventbus.message import Message

__all__ = ["Decoder", "DeliveryDefectError", "Stopping"]

log = get_logger("eventbus.dispatch")


class DeliveryDefectError(Exception):
    """The transport could not read all of a delivery (`RawDelivery.defect` says what): it is
    dead-lettered as undecodable."""


class Stopping(Exception):
    """The subscription started stopping while decoding waited for its codec."""


class Decoder:
    def __init__(
        self,
        codec: Codec | AsyncCodec,
        target: Any,
        wait: Callable[[float], Awaitable[bool]],
        describe: str,
    ) -> None:
        """``target``: the handler's payload annotation (None or `Message`: the raw message).
        ``wait(seconds)`` returns True when the subscription started stopping meanwhile."""
        self._codec = codec
        self._async = inspect.iscoroutinefunction(codec.decode)
        self._target = target
        self._raw = target is None or target is Message
        self._wait = wait
        self._describe = describe

    @property
    def immediate(self) -> bool:
        """`decode_now` may be used: nothing to await (the raw message, or a sync codec)."""
        return self._raw or not self._async

    def decode_now(self, message: Message) -> object:
        """`decode` without a coroutine, when `immediate`; raises what the codec raised (a
        codec outage included: the caller then takes the waiting path, `decode`)."""
        if self._raw:
            return message
        return cast(Codec, self._codec).decode(message, self._target)

    async def decode(self, message: Message) -> object:
        """The payload; raises what the codec raised for a poison message, or `Stopping`."""
        if self._raw:
            return message
        pause = 0.05
        while True:
            try:
                decoded = self._codec.decode(message, self._target)
                if self._async:
                    return await cast(Awaitable[object], decoded)
                return decoded
            except BrokerUnavailableError as exc:
                log.warning("%s: codec unavailable (%r); retrying", self._describe, exc)
                if await self._wait(pause):
                    raise Stopping from exc
                pause = min(pause * 2, 5.0)
