"""The reply inbox of one bus (request-reply, DESIGN 12): an exclusive, auto-deleted queue.

Its name, ``eventbus.reply.<random>``, is the requests' native ``reply_to``; a responder (ours,
or any AMQP client) answers on the default exchange with that name as routing key and the
request's ``correlation_id``. The queue lives as long as the consuming connection: when that
is lost, the queue goes with it, and the inbox declares it again under the same name once
reconnected, so requests sent before still get the replies published after. (If the broker
still holds the old connection's queue, the name is in exclusive use: the inbox takes a new
one.) A reply published while no queue exists is returned to its publisher (mandatory) and
dropped there; its request times out.

Replies are consumed with automatic acknowledgement: a reply is matched and forgotten at once,
and nothing could redeliver one to a requester that is gone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

import anyio
from aiormq import exceptions as amqp
from aiormq.abc import AbstractChannel, DeliveredMessage
from anyio.abc import TaskStatus
from pamqp.commands import Basic

from eventbus.backoff import Backoff
from eventbus.errors import BrokerUnavailableError, ConfigurationError
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus_rabbitmq import wire
from eventbus_rabbitmq.connection import Connector, open_channel
from eventbus_rabbitmq.errors import translate
from eventbus_rabbitmq.url import Settings

__all__ = ["RabbitReplyInbox"]

log = get_logger("eventbus.rabbitmq")

_CLOSE_SECONDS = 1.0
_FAILURES = (amqp.AMQPError, amqp.ChannelInvalidStateError, OSError, asyncio.TimeoutError)


class RabbitReplyInbox:
    def __init__(self, connector: Connector, settings: Settings) -> None:
        self._connector = connector
        self._settings = settings
        self._address = f"eventbus.reply.{uuid.uuid4().hex}"
        self._declared = anyio.Event()

    async def address(self) -> str:
        await self._declared.wait()
        return self._address

    async def run(
        self, deliver: Callable[[Message], None], *, task_status: TaskStatus[None]
    ) -> None:
        backoff = Backoff(0.1, 5.0)
        # The first connection within connect_timeout: the request that started the inbox
        # then fails with BrokerUnavailableError naming the broker, not a bare timeout.
        within: float | None = self._settings.connect_timeout
        started = False
        while True:
            channel: AbstractChannel | None = None
            try:
                conn = await self._connector.get(within=within)
                within = None
                channel = await open_channel(conn)
                await channel.queue_declare(
                    self._address, exclusive=True, auto_delete=True, durable=False
                )
                await channel.basic_consume(self._address, self._receiver(deliver), no_ack=True)
                self._declared.set()
                if not started:
                    task_status.started()
                    started = True
                backoff.up()
                # Waited for, never raised: aiormq ends a closed channel's future with the
                # close reason or a bare CancelledError, which would cancel the bus.
                await asyncio.wait({channel.closing})
            except BrokerUnavailableError:
                if not started:
                    raise
                return  # the transport closed
            except _FAILURES as exc:
                if isinstance(exc, amqp.ChannelLockedResource):
                    # The broker still holds the queue of our lost connection.
                    self._address = f"eventbus.reply.{uuid.uuid4().hex}"
                elif not started:
                    what = f"declare reply queue {self._address}"
                    refused = translate(exc, address=self._settings.address, what=what)
                    if isinstance(refused, ConfigurationError):
                        raise refused from exc  # permissions: waiting would not help
                log.warning("reply inbox %s lost its channel: %r", self._address, exc)
            finally:
                if channel is not None and not channel.is_closed:
                    with anyio.move_on_after(_CLOSE_SECONDS, shield=True), suppress(*_FAILURES):
                        await channel.close()
            if self._declared.is_set():
                self._declared = anyio.Event()  # no queue until declared again
            await anyio.sleep(backoff.next())

    def _receiver(
        self, deliver: Callable[[Message], None]
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        address = self._address

        async def receive(raw: DeliveredMessage) -> None:
            delivery = raw.delivery
            assert isinstance(delivery, Basic.Deliver)
            try:
                message = wire.decode(
                    address,
                    raw.body,
                    raw.header.properties,
                    exchange=delivery.exchange or "",
                    routing_key=delivery.routing_key or "",
                )
            except Exception:
                log.exception("cannot read a reply in %s; dropped", address)
                return
            deliver(message)

        return receive
