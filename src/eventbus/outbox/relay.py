"""`OutboxRelay`: publishes what committed in one or more outboxes, for as long as a bus runs.

It runs in the bus's task group (`EventBus(outbox=...)`, ``eventbus outbox relay``) and goes
through the bus's own publish path, so metrics and tracing count what it publishes. Each outbox
gets a loop: a round (`Outbox.relay_round`), housekeeping (backlog, retention), a short sleep
when the round found nothing. A round that fails -- the database or the broker gone -- leaves its
rows unsent; the loop logs (the address, never a password) and tries again with backoff, for
as long as it runs.

A row that can never be published -- larger than the broker takes, unroutable (RabbitMQ: no
queue bound to its topic), or stored in a form that makes no message -- is set aside: its
``failed`` column says why, and it holds back nothing, as a dead letter would not. It stays in
the table (counted by the ``failed`` backlog and gauge) until someone clears that column.

Stopping lets the batch in hand finish (published *and* marked, so a clean stop leaves no
duplicate behind) within the bus's ``graceful_timeout``, even when the stop comes as the
cancellation of everything around the bus (a signal to ``eventbus run``): the loops run in a
shielded scope that only `stop` cancels. After that the rows published but not marked go out
again later.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from eventbus.backoff import Backoff
from eventbus.codecs.base import AsyncCodec, Codec
from eventbus.errors import ConfigurationError, MessageTooLargeError, PublishError, UnroutableError
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.outbox.base import Outbox, OutboxRow, PublishFailed, Relayed
from eventbus.outbox.stats import RelayStats
from eventbus.transports.base import Destination

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["OutboxRelay"]

log = get_logger("eventbus.outbox")

Send = Callable[[Destination, Sequence[Message]], Awaitable[None]]
_NEVER = (MessageTooLargeError, UnroutableError)
"""Publish failures no retry can fix: the rows are set aside."""


class OutboxRelay:
    """One relay loop per outbox, started with `run` in a task group, ended with `stop`.

    ``poll_interval``: seconds between rounds that found nothing. ``batch_size``: rows per
    publish. ``backlog_interval``: seconds between backlog reads (the gauge and `stats`).
    ``purge_interval``: seconds between retention passes, each deleting at most
    ``purge_batch`` rows per round trip until none is due.
    """

    def __init__(
        self,
        outboxes: Outbox | Sequence[Outbox],
        send: Send,
        *,
        codec: Codec | AsyncCodec | None = None,
        max_message_size: Callable[[], int | None] = lambda: None,
        poll_interval: float = 0.2,
        batch_size: int = 200,
        backlog_interval: float = 5.0,
        purge_interval: float = 60.0,
        purge_batch: int = 1000,
    ) -> None:
        self.outboxes: tuple[Outbox, ...] = (
            tuple(outboxes) if isinstance(outboxes, Sequence) else (outboxes,)
        )
        if not self.outboxes:
            raise ConfigurationError("outbox= needs at least one outbox")
        tables = [o.table for o in self.outboxes]
        if len(set(tables)) != len(tables):
            # Stats and gauges are labelled by table name; one table twice would also be
            # relayed by two loops of one process.
            raise ConfigurationError(f"give each outbox its own table name, got {tables}")
        if codec is not None:
            for outbox in self.outboxes:
                outbox.attach(codec)
        self._send = send
        self._max_message_size = max_message_size
        """The transport's limit, asked each batch (it may be known only once connected)."""
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.backlog_interval = backlog_interval
        self.purge_interval = purge_interval
        self.purge_batch = purge_batch
        self.stats = {o.table: RelayStats(o.table) for o in self.outboxes}
        self._stopping = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()

    async def run(
        self,
        registry: CollectorRegistry | None = None,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Relay until `stop`; ``registry``: where the backlog gauges go (metrics on)."""
        self._stopping = anyio.Event()
        self._done = anyio.Event()
        collector = None
        if registry is not None:
            from eventbus.outbox.metrics import OutboxCollector  # imports prometheus_client

            collector = OutboxCollector(self.stats)
            registry.register(collector)
        # Shielded: only `stop` ends the loops, so a cancelled bus still finishes the batch in
        # hand (its `_stop` always calls `stop`).
        self._scope = anyio.CancelScope(shield=True)
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    for outbox in self.outboxes:
                        tg.start_soon(self._loop, outbox)
                    task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                for outbox in self.outboxes:
                    try:
                        await outbox.close()
                    except Exception as exc:
                        log.debug("closing outbox %s: %r", outbox.table, exc)
            if collector is not None and registry is not None:
                registry.unregister(collector)
            self._scope = None
            self._done.set()

    async def stop(self, grace: float) -> None:
        """Finish the batch in hand (within ``grace`` seconds), then end `run`. Nothing to do
        when `run` is not running (a bus whose start failed before the relay's turn)."""
        if self._scope is None:
            return
        self._stopping.set()
        with anyio.move_on_after(grace):
            await self._done.wait()
        if self._scope is not None:
            self._scope.cancel()  # the batch in hand is published again later, never lost
        await self._done.wait()

    async def _loop(self, outbox: Outbox) -> None:
        stats = self.stats[outbox.table]
        backoff = Backoff(0.1, 5.0, stable_after=10.0)
        failing = False
        next_backlog = next_purge = 0.0

        def marked(count: int) -> None:
            stats.relayed += count

        while not self._stopping.is_set():
            done = 0
            delay: float | None = None
            try:
                done = await outbox.relay_round(
                    self._publish,
                    batch_size=self.batch_size,
                    stopping=self._stopping.is_set,
                    marked=marked,
                )
            except PublishFailed as exc:  # the broker: its rows stay unsent, retried
                delay = self._failed(outbox, stats, backoff, exc.__cause__ or exc)
            except ConfigurationError:
                raise  # the database refused us (password, no such database): nothing to retry
            except Exception as exc:
                delay = self._failed(outbox, stats, backoff, exc)
            # Housekeeping even while rounds fail: the gauges must show a backlog that grows.
            now = anyio.current_time()
            if now >= next_backlog:
                next_backlog = now + self.backlog_interval
                try:
                    stats.backlog = await outbox.backlog()
                except Exception as exc:
                    log.debug("outbox %s: reading the backlog failed: %r", outbox.table, exc)
            if now >= next_purge and delay is None:
                next_purge = now + self.purge_interval
                try:
                    await self._purge(outbox)
                except Exception as exc:
                    log.warning("outbox %s: deleting sent rows failed: %r", outbox.table, exc)
            if delay is not None:
                failing = True
                await self._sleep(delay)
                continue
            if failing:
                log.info("outbox %s at %s: relaying again", outbox.table, outbox.address())
                failing = False
            backoff.up()
            if done == 0:
                await self._sleep(self.poll_interval)

    def _failed(
        self, outbox: Outbox, stats: RelayStats, backoff: Backoff, exc: BaseException
    ) -> float:
        stats.failures += 1
        delay = backoff.next()
        log.warning(
            "outbox %s at %s: %s: %s; its rows stay unsent, trying again in %.1fs",
            outbox.table,
            outbox.address(),
            type(exc).__name__,
            exc,
            delay,
        )
        return delay

    async def _publish(self, rows: Sequence[OutboxRow]) -> Relayed:
        """Runs of rows to one destination as one publish each, in order; each publish returns
        once the broker confirmed all of its messages (DESIGN 3.7). What can never be published
        is set aside (module docstring); the first failure that may pass stops the batch."""
        relayed = Relayed(sent=[], failed={})
        limit = self._max_message_size()
        ready: list[OutboxRow] = []
        for row in rows:
            why = row.defect
            if why is None and limit is not None and len(row.message.body) > limit:
                why = (
                    f"MessageTooLargeError: {len(row.message.body)} bytes, the broker takes {limit}"
                )
            if why is None:
                ready.append(row)
            else:
                relayed.failed[row.id] = why
        for (kind, name), run in itertools.groupby(ready, lambda r: (r.kind, r.message.topic)):
            batch = list(run)
            try:
                await self._send(Destination(name, kind), [r.message for r in batch])
            except PublishError as exc:
                failures = exc.failures or dict.fromkeys(range(len(batch)), exc)
                if all(isinstance(e, _NEVER) for e in failures.values()):
                    for index, row in enumerate(batch):
                        if index in failures:
                            cause = failures[index]
                            relayed.failed[row.id] = f"{type(cause).__name__}: {cause}"
                        else:
                            relayed.sent.append(row.id)
                    continue
                # Confirmed up to the first failure; the rest waits (those confirmed after it
                # go out again: duplicates, never a loss).
                relayed.sent.extend(r.id for r in batch[: min(failures)])
                relayed.error = exc
                break
            except Exception as exc:
                relayed.error = exc
                break
            relayed.sent.extend(r.id for r in batch)
        for row_id, why in relayed.failed.items():
            log.error("outbox row %d set aside, it can never be published: %s", row_id, why)
        return relayed

    async def _purge(self, outbox: Outbox) -> None:
        while not self._stopping.is_set():
            if await outbox.purge_sent(limit=self.purge_batch) < self.purge_batch:
                return

    async def _sleep(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._stopping.wait()
