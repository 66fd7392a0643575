"""`AmqpDelivery`: one delivery handed to the core, settled on the channel it arrived on.

Acks go through the channel's `ChannelAcks`, which coalesces them (see acks.py); releases are
sent at once.

Settling is idempotent (aio-pika and aiormq raise on a second ack; we do not), and never raises
into the worker: if the channel is gone, RabbitMQ has already requeued the message when the
channel closed, so the settle is a no-op and the message is redelivered, never lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiormq import exceptions as amqp
from aiormq.abc import AbstractChannel

from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus_rabbitmq.acks import ChannelAcks

__all__ = ["SETTLE_FAILURES", "AmqpDelivery"]

log = get_logger("eventbus.rabbitmq")

SETTLE_FAILURES = (amqp.AMQPError, amqp.ChannelInvalidStateError, OSError, RuntimeError)
"""What a channel operation raises when the channel or its connection is gone (or refuses)."""


class AmqpDelivery:
    """A `RawDelivery` bound to the channel it arrived on."""

    __slots__ = (
        "_acks",
        "_channel",
        "_on_settled",
        "_settled",
        "_tag",
        "defect",
        "message",
        "native",
        "queue",
        "redelivered",
        "size",
    )

    def __init__(
        self,
        message: Message,
        *,
        redelivered: bool,
        acks: ChannelAcks,
        tag: int,
        queue: str,
        on_settled: Callable[[AmqpDelivery, bool], None],
        defect: str | None = None,
        size: int = 0,
    ) -> None:
        self.message = message
        self.size = size  # bytes of the body as received: counts toward the read-ahead budget
        self.defect = defect
        self.redelivered = redelivered
        self.queue = queue
        self.native: Mapping[str, str] = {"queue": queue}
        self._acks = acks
        self._channel = acks.channel
        self._tag = tag
        self._on_settled = on_settled
        self._settled = False

    @property
    def channel(self) -> AbstractChannel:
        return self._channel

    async def ack(self) -> None:
        await self._settle(ack=True)

    async def release(self) -> None:
        await self._settle(ack=False)

    @property
    def tag(self) -> int:
        return self._tag

    def forget(self) -> None:
        """Lost with its channel (the broker requeued it, or is about to): from now on
        settling is a no-op, so no ack can reach the broker for a message someone else owns."""
        self._settled = True

    async def _settle(self, *, ack: bool) -> None:
        if self._settled:
            return
        self._settled = True
        # Bookkeeping first: the handler is done with it whether or not the frame gets out.
        self._on_settled(self, ack)
        try:
            if self._channel.is_closed:
                # RabbitMQ requeued it when the channel closed: nothing to do, nothing lost.
                log.debug("settling %s after its channel closed: no-op", self.message.id)
                return
            if ack:
                self._acks.ack(self._tag)
            else:
                await self._acks.release(self._tag)
        except SETTLE_FAILURES as e:
            log.info(
                "could not %s message %s (%r); the broker will redeliver it",
                "ack" if ack else "release",
                self.message.id,
                e,
            )
