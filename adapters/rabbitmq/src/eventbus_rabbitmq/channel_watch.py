"""Watching a subscription's channel: report what its loss takes away, then restore it.

When a consuming channel ends (the broker closed it, e.g. on ``consumer_timeout``; its
connection died; the broker cancelled a consumer because its queue was deleted), RabbitMQ
requeues every unacked delivery of it and may hand them to another consumer at once. `watch`
awaits that end in the subscription's ``run`` (through the channel's ``closing`` future), not
in the iterator: the core does not call the iterator while its in-flight room is full, and that
is exactly when handlers are running deliveries that another consumer may now be handling too.
On the end it:

1. gives the channel up (`ConsumingChannel.give_up`): settling its deliveries is a no-op from
   then on, and nothing more is handed out from it;
2. awaits ``owner.lost(...)`` with the deliveries handed out on it and not settled: the core
   cancels the handlers still running them and returns once none does;
3. closes the channel if it is still open (a cancelled consumer), which requeues its messages,
   only after step 2, so that no key is handled in two places;
4. opens a fresh channel with backoff, declaring and consuming again, unless the subscription
   was stopped (then it only waits for ``close``).

So a key can be handled twice at once only between the broker's requeue and step 2, and only
when the broker or the network, not this process, ended the channel.
"""

from __future__ import annotations

import time
from typing import NoReturn, Protocol

import anyio
from aiormq import exceptions as amqp

from eventbus.backoff import Backoff
from eventbus.errors import BrokerUnavailableError
from eventbus.loggers import get_logger
from eventbus.transports.base import DeliveryOwner
from eventbus_rabbitmq.connection import Connector
from eventbus_rabbitmq.consuming_channel import ConsumingChannel
from eventbus_rabbitmq.delivery import SETTLE_FAILURES
from eventbus_rabbitmq.errors import is_connection_lost, translate

__all__ = ["Watched", "watch"]

log = get_logger("eventbus.rabbitmq")

RESTORE_STEP = 5.0
"""Seconds one restore attempt may wait for a connection, so that ``stop`` is seen between."""


class Watched(Protocol):
    """What `watch` needs from the subscription it watches."""

    @property
    def name(self) -> str: ...
    @property
    def current(self) -> ConsumingChannel | None: ...
    @property
    def closing(self) -> bool:
        """``close`` has begun: the channel it closes is no loss."""
        ...

    @property
    def stopped(self) -> bool: ...
    async def reopen(self, within: float) -> None:
        """Open, declare and consume on a fresh channel; make it `current`."""
        ...


async def watch(
    sub: Watched, owner: DeliveryOwner, *, connector: Connector, address: str
) -> NoReturn:
    """Run for the subscription's whole life (cancelled by its ``close``); raises only what
    restoring cannot fix (a translated refusal: the core then subscribes again with backoff)."""
    while True:
        current = sub.current
        if current is not None:
            await current.ended()
            if sub.closing:
                await anyio.sleep_forever()
            await lose(current, owner, name=sub.name)
        if sub.stopped:
            await anyio.sleep_forever()  # fetching ended for good; close() ends the wait
        await _restore(sub, connector=connector, address=address)


async def lose(channel: ConsumingChannel, owner: DeliveryOwner, *, name: str) -> None:
    """Steps 1-3 of the module docstring."""
    noticed = time.monotonic()
    lost = channel.give_up()
    if lost:
        log.warning(
            "the channel of subscription %s ended with %d deliveries in flight; they are "
            "requeued and may go to another consumer",
            name,
            len(lost),
        )
        await owner.lost(lost)
        log.info(
            "%d lost deliveries of %s stopped in %.3f s",
            len(lost),
            name,
            time.monotonic() - noticed,
        )
    # Bounded: a broker that does not answer the close must not hold up the restore (what
    # is unacked on the channel is requeued when the connection goes, at the latest).
    with anyio.move_on_after(RESTORE_STEP):
        await channel.close(requeue_first=False)


async def _restore(sub: Watched, *, connector: Connector, address: str) -> None:
    backoff = Backoff(0.1, 5.0)
    while not sub.stopped:
        try:
            await sub.reopen(within=RESTORE_STEP)
            log.info("subscription to %s resumed", sub.name)
            return
        except BrokerUnavailableError:
            if connector.closed:
                raise
            continue  # the connector backs off; check `stopped` between waits
        except SETTLE_FAILURES as e:
            if not is_connection_lost(e) and not isinstance(e, amqp.ChannelNotFoundEntity):
                raise translate(e, address=address, what=f"consume {sub.name!r}") from e
            log.info("restoring subscription to %s failed (%r); retrying", sub.name, e)
        await anyio.sleep(backoff.next())
