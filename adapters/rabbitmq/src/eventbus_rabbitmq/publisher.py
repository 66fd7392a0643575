"""Publishing: publisher confirms, persistent messages, mandatory routing, pipelined batches.

``publish(to, messages)`` sends every message, then waits for all the confirms together (a
confirm for a durable queue arrives after the disk write, batched by the broker, so waiting for
each in turn would be slow). A returned message (``mandatory``: no queue bound) fails with
`UnroutableError`. A message whose connection or channel died before its confirm is sent again
on a fresh one until the publish deadline: a lost confirm may mean a duplicate, never a loss.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass

import anyio
from aiormq import exceptions as amqp
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp.commands import Basic

from eventbus.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    EventBusError,
    PublishError,
    UnroutableError,
)
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.transports import scheduling
from eventbus.transports.base import Destination
from eventbus.transports.publishing import publish_error, too_large
from eventbus_rabbitmq import wire
from eventbus_rabbitmq.connection import Connector, open_channel
from eventbus_rabbitmq.errors import is_connection_lost, translate
from eventbus_rabbitmq.topology import Topology, delay_ms, group_queue
from eventbus_rabbitmq.url import Settings

__all__ = ["Publisher"]

log = get_logger("eventbus.rabbitmq")

# Channel-level refusals (e.g. an exchange deleted behind our back) are retried this many times
# after re-declaring; connection losses are retried until the deadline.
_CHANNEL_RETRIES = 3
_CLOSE_SECONDS = 1.0  # closing a channel the broker may not answer on
_AMQP_FAILURES = (amqp.AMQPError, amqp.ChannelInvalidStateError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class _Route:
    exchange: str
    routing_key: Callable[[Message], str]
    not_before: float | None = None  # through a delay queue: due at this Unix time
    scheduled: Destination | None = None  # through a delay tier: stamped with where it goes

    def expiration_ms(self) -> int | None:
        """The delay left, for the message's expiration in the delay queue. Computed right
        before the message is written, so that time spent waiting (a reconnect, a retry, the
        turn of a same-id publish) is not added to the due time."""
        if self.not_before is None:
            return None
        return delay_ms(max(self.not_before - time.time(), 0.0))


def _fixed(name: str) -> Callable[[Message], str]:
    return lambda _message: name


class Publisher:
    def __init__(self, connector: Connector, topology: Topology, settings: Settings) -> None:
        self._connector = connector
        self._topology = topology
        self._settings = settings
        self.max_message_size: int | None = settings.max_message_size
        self._channel: AbstractChannel | None = None
        self._admin: AbstractChannel | None = None
        self._channel_lock = asyncio.Lock()
        # aiormq matches a returned message to its publish by message_id: two publishes with
        # the same id in flight on one channel would be confused. The core re-publishes ids
        # (retries, dead letters), so publishes of one id are serialized: id -> the publishes
        # waiting for it (a future is only made for a second publish of an id in flight).
        self._in_flight: dict[str, list[asyncio.Future[None]]] = {}
        self._groups: dict[tuple[str, str], _Route] = {}

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.publish_timeout
        failures: dict[int, BaseException] = {}
        pending: list[int] = []
        for index, message in enumerate(messages):
            if (oversize := too_large(message, self.max_message_size, "RabbitMQ")) is not None:
                failures[index] = oversize
            else:
                pending.append(index)

        channel_retries = 0
        while pending:
            try:
                channel = await self._publish_channel(deadline)
                route = await self._route(to, deadline)
            except TimeoutError:
                # A channel open or a declaration the broker never answered (just after a
                # restart, say): each is bounded by the deadline, so the publish fails instead
                # of hanging. Only those slow paths pay for a timer, not every publish.
                await self._drop_admin()  # it may still wait for that answer
                unanswered = BrokerUnavailableError(
                    self._settings.address,
                    f"no answer opening a channel or declaring {to.name!r} within "
                    f"{self._settings.publish_timeout:g} s",
                )
                failures.update(dict.fromkeys(pending, unanswered))
                break
            except EventBusError as e:
                failures.update(dict.fromkeys(pending, e))
                break
            except _AMQP_FAILURES as e:
                if is_connection_lost(e) and loop.time() < deadline:
                    continue
                error = translate(
                    e,
                    address=self._settings.address,
                    what=f"publish to {to.name!r} as {self._settings.user!r}",
                )
                failures.update(dict.fromkeys(pending, error))
                break
            outcomes = await self._send_all(channel, route, messages, pending, deadline)
            retry: list[int] = []
            redeclare = False
            for index, outcome in zip(pending, outcomes, strict=True):
                if outcome is None:
                    continue
                if isinstance(outcome, EventBusError):
                    failures[index] = outcome
                elif is_connection_lost(outcome) and loop.time() < deadline:
                    retry.append(index)
                elif isinstance(outcome, amqp.ChannelClosed) and channel_retries < _CHANNEL_RETRIES:
                    # The broker closed the channel, maybe for another publish on it (say, an
                    # exchange deleted behind our back): declare again, then retry.
                    retry.append(index)
                    redeclare = True
                else:
                    failures[index] = translate(
                        outcome,
                        address=self._settings.address,
                        what=f"publish to {to.name!r} as {self._settings.user!r}",
                    )
            if redeclare:
                channel_retries += 1
                self._topology.forget()
                self._groups.clear()
            pending = retry
        if failures:
            raise _batch_error(to, messages, failures)

    # -- routes -----------------------------------------------------------------------------

    async def _route(self, to: Destination, deadline: float) -> _Route:
        if to.reply:
            # A reply queue is the requester's (exclusive to its connection): declaring it
            # would be refused, or create a queue nobody reads once the requester is gone.
            return _Route("", _fixed(to.name))
        if to.kind == "queue":
            if not self._topology.declared("q", to.name):  # no admin channel when known
                await self._declare(lambda ch: self._topology.queue(ch, to.name), to, deadline)
            final = _Route("", _fixed(to.name))
        elif to.group is not None:
            final = await self._group_route(to.name, to.group, deadline)
        else:
            if not self._topology.declared("x", to.name):
                await self._declare(lambda ch: self._topology.topic(ch, to.name), to, deadline)
            final = _Route(to.name, wire.routing_key)
        if to.delay <= 0:
            return final
        tier = scheduling.tier_for(to.delay)
        if tier is not None:
            # Long enough for a tier: no head-of-line blocking, any length (`scheduling`).
            names: list[str] = []

            async def declare_tier(channel: AbstractChannel) -> None:
                names.append(await self._topology.tier(channel, tier))

            await self._declare(declare_tier, to, deadline)
            return _Route("", _fixed(names[-1]), scheduled=to)
        if to.kind == "topic" and to.group is None:
            # A delay queue would expire it into the topic's exchange, which drops it silently
            # if no group is bound by then. The forwarder waits it out instead and publishes
            # it when due, mandatory: what nothing receives is dead-lettered, not lost.
            queue = self._topology.scheduled_queue()
            await self._declare(lambda ch: self._topology.queue(ch, queue), to, deadline)
            return _Route("", _fixed(queue), scheduled=to)
        # Delayed: park it in a TTL queue that dead-letters to the final exchange with the
        # message's routing key when its exact per-message expiration has passed. The bucket
        # is chosen from the delay left now; the expiration, computed later, can only be
        # shorter, so it still fits the bucket.
        ms = delay_ms(to.delay)
        holder: list[str] = []

        async def declare(channel: AbstractChannel) -> None:
            holder.append(await self._topology.delay(channel, ms, final.exchange))

        await self._declare(declare, to, deadline)
        return _Route(holder[-1], final.routing_key, not_before=to.not_before)

    async def _group_route(self, topic: str, group: str, deadline: float) -> _Route:
        """Straight to one group. Whether it is partitioned is read from the broker, so a
        publisher needs no ``partitions`` setting (a DLQ replay from the CLI, for instance)."""
        cached = self._groups.get((topic, group))
        if cached is not None:
            return cached
        name = group_queue(topic, group)
        conn = await self._connection(deadline)
        async with asyncio.timeout_at(deadline):
            if await _exists(conn, "queue", name):
                route = _Route("", _fixed(name))
            elif await _exists(conn, "exchange", name):
                route = _Route(name, wire.routing_key)
            else:
                raise UnroutableError(f"group {group!r} of topic {topic!r} does not exist")
        self._groups[(topic, group)] = route
        return route

    async def _declare(
        self,
        declare: Callable[[AbstractChannel], Awaitable[object]],
        to: Destination,
        deadline: float,
    ) -> None:
        for attempt in (1, 2):
            channel = await self._admin_channel(deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    await declare(channel)
                return
            except _AMQP_FAILURES as e:
                if is_connection_lost(e):
                    # A channel whose RPC was cancelled is unusable without being closed:
                    # the next try opens a fresh one, or waits for the connection.
                    await self._drop_admin(channel)
                    raise  # publish() reconnects and tries again until its deadline
                # The admin channel is shared: a refusal caused by a concurrent declaration
                # closes it for us too, so one more try on a fresh channel.
                if attempt == 2 or not isinstance(e, amqp.ChannelClosed):
                    what = f"declare {to.name!r} as {self._settings.user!r}"
                    raise translate(e, address=self._settings.address, what=what) from e

    # -- sending ----------------------------------------------------------------------------

    async def _send_all(
        self,
        channel: AbstractChannel,
        route: _Route,
        messages: Sequence[Message],
        indices: list[int],
        deadline: float,
    ) -> list[BaseException | None]:
        if len(indices) == 1:  # publish(): no task group, no task
            return [await self._send(channel, route, messages[indices[0]], deadline)]
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._send(channel, route, messages[i], deadline))
                for i in indices
            ]
        return [task.result() for task in tasks]

    async def _send(
        self, channel: AbstractChannel, route: _Route, message: Message, deadline: float
    ) -> BaseException | None:
        """Publish one message and wait for its confirm; return the failure instead of raising
        (so one failure does not cancel the rest of a batch)."""
        message_id = wire.amqp_message_id(message)
        while (waiting := self._in_flight.get(message_id)) is not None:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting.append(turn)
            await turn
        self._in_flight[message_id] = []
        try:
            if route.scheduled is not None:
                message = scheduling.stamp(message, route.scheduled)
            properties = wire.encode(message, expiration_ms=route.expiration_ms())
            async with asyncio.timeout_at(deadline):
                result = await channel.basic_publish(
                    message.body,
                    exchange=route.exchange,
                    routing_key=route.routing_key(message),
                    properties=properties,
                    mandatory=True,
                )
        except TimeoutError:
            return BrokerUnavailableError(
                self._settings.address,
                f"no publisher confirm within {self._settings.publish_timeout:g} s",
            )
        except Exception as e:
            return e
        finally:
            for turn in self._in_flight.pop(message_id):
                if not turn.done():  # not cancelled: it checks again whether the id is free
                    turn.set_result(None)
        if isinstance(result, DeliveredMessage):
            return UnroutableError(
                f"message {message.id} to {route.exchange or route.routing_key(message)!r} "
                f"was returned by RabbitMQ: no queue is bound to receive it"
            )
        if isinstance(result, Basic.Ack):
            return None
        return PublishError(f"message {message.id} was not confirmed by RabbitMQ: {result!r}")

    # -- channels ---------------------------------------------------------------------------

    async def _connection(self, deadline: float) -> AbstractConnection:
        remaining = deadline - asyncio.get_running_loop().time()
        return await self._connector.get(within=max(remaining, 0.001))

    async def _publish_channel(self, deadline: float) -> AbstractChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel  # the common case, without the lock
        async with self._channel_lock:
            if self._channel is None or self._channel.is_closed:
                conn = await self._connection(deadline)
                async with asyncio.timeout_at(deadline):
                    self._channel = await open_channel(
                        conn, publisher_confirms=True, on_return_raises=False
                    )
            return self._channel

    async def _drop_admin(self, channel: AbstractChannel | None = None) -> None:
        """Forget the admin channel (only if it is still ``channel``, when given) and close it,
        without waiting long for a broker that may not answer."""
        admin = self._admin
        if admin is None or (channel is not None and admin is not channel):
            return
        self._admin = None
        if not admin.is_closed:
            # Best effort: the channel is forgotten either way.
            with anyio.move_on_after(_CLOSE_SECONDS, shield=True), suppress(*_AMQP_FAILURES):
                await admin.close()

    async def _admin_channel(self, deadline: float) -> AbstractChannel:
        async with self._channel_lock:
            if self._admin is None or self._admin.is_closed:
                conn = await self._connection(deadline)
                async with asyncio.timeout_at(deadline):
                    self._admin = await open_channel(conn, publisher_confirms=False)
            return self._admin


async def _exists(conn: AbstractConnection, kind: str, name: str) -> bool:
    """Passive declare on a throwaway channel (a miss closes the channel)."""
    channel = await open_channel(conn, publisher_confirms=False)
    try:
        if kind == "queue":
            await channel.queue_declare(name, passive=True)
        else:
            await channel.exchange_declare(name, passive=True)
    except amqp.ChannelNotFoundEntity:
        return False
    finally:
        if not channel.is_closed:  # bounded: this may run after the broker stopped answering
            with anyio.move_on_after(_CLOSE_SECONDS, shield=True), suppress(*_AMQP_FAILURES):
                await channel.close()
    return True


def _batch_error(
    to: Destination, messages: Sequence[Message], failures: dict[int, BaseException]
) -> Exception:
    first = failures[min(failures)]
    if (
        len(failures) == len(messages)
        and len({type(e) for e in failures.values()}) == 1
        and isinstance(first, BrokerUnavailableError | ConfigurationError)
    ):
        # The same outage (it names the address) or refusal (a bad name, missing permissions:
        # AuthorizationError) for every message: raised as it is.
        return first
    return publish_error(failures, messages, repr(to.name))
