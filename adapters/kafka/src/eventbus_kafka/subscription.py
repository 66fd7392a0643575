"""`KafkaSubscription`: one consumer, its background work, and what it hands to the core.

`run` (in the core's task group) joins the group, then runs the fetch loop (`fetcher`, filling
the read-ahead buffer, `readahead`) and the commit loop in a task group of its own, and returns
once `close` was called. The iterator hands buffered records out in batches, never more than
``prefetch`` unsettled (`handed_out`). Rebalances are handled in `revocation`; what may be
committed is decided by `offsets` and done by `committer`.

Shutdown order, which the commit rule depends on: `stop` ends the fetch loop (deliveries handed
out can still be settled); `close` ends the commit loop, commits once more what is safe, and
leaves the group (aiokafka calls no revoke hook on stop). After a crash of `run` nothing is
committed any more: every settle is a no-op and the new owner redelivers what was unfinished.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus

from eventbus.errors import BrokerUnavailableError, EventBusError
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.transports.base import DeliveryOwner, RawDelivery, SubscriptionSpec
from eventbus_kafka.admin import TopicAdmin
from eventbus_kafka.assignment import Adopter
from eventbus_kafka.committer import Committer, pending_commits
from eventbus_kafka.consumer import assign_everything, new_consumer
from eventbus_kafka.delivery import KafkaDelivery, Taken
from eventbus_kafka.errors import translate
from eventbus_kafka.fetcher import Fetcher
from eventbus_kafka.handed_out import HandedOut
from eventbus_kafka.ownership import Ownership
from eventbus_kafka.pauses import Pauses
from eventbus_kafka.readahead import ReadAhead
from eventbus_kafka.revocation import Revocation
from eventbus_kafka.url import KafkaSettings

__all__ = ["KafkaSubscription"]

log = get_logger(__name__)

_COMMIT_TIMEOUT = 10.0
_LEAVE_TIMEOUT = 15.0


class KafkaSubscription:
    """A subscription (`eventbus.transports.base.Subscription`) on one consumer."""

    def __init__(
        self,
        settings: KafkaSettings,
        spec: SubscriptionSpec,
        owner: DeliveryOwner,
        *,
        topics: list[str],
        group: str | None,
        admin: TopicAdmin,
        on_close: Callable[[KafkaSubscription], None] | None = None,
    ) -> None:
        self._settings = settings
        self._spec = spec
        self._owner = owner
        self._topics = topics
        self._group = group
        self._admin = admin
        self._on_close = on_close
        self._prefetch = max(1, spec.prefetch)
        self._consumer: Any = None
        self._owned = Ownership(grouped=group is not None)
        self._pauses = Pauses()
        self._committer = Committer(self._describe())
        self._buffer = ReadAhead(self._prefetch)
        self._handed_out = HandedOut()
        self._fetcher = Fetcher(
            spec,
            address=settings.address,
            user=settings.user,
            owned=self._owned,
            pauses=self._pauses,
            buffer=self._buffer,
            adopter=Adopter(
                settings,
                spec,
                group=group,
                admin=admin,
                owned=self._owned,
                committer=self._committer,
            ),
            describe=self._describe(),
            offset_window=settings.offset_window,
        )
        self._failure: BaseException | None = None
        self._stopped = False
        self._closed = False
        self._running = False
        self._run_scope = anyio.CancelScope()
        """Cancelled by `close`: `run` then leaves the group and returns."""
        self._fetch_scope = anyio.CancelScope()
        """Cancelled by `stop`: the fetch loop ends, commits go on."""
        self._fetching = False
        self._fetch_done = anyio.Event()
        self._run_done = anyio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join the group (or assign every partition, for a broadcast), then fetch and commit
        until `close`. ``task_status.started()`` once a message published afterwards is sure
        to be delivered. Raises, before that, `BrokerUnavailableError` when the join does not
        complete within ``join_timeout`` and the translated error when the broker refuses;
        after it, the translated error when fetching cannot go on (credentials, ACLs)."""
        if self._closed:
            return  # closed before it ran: nothing to join
        self._running = True
        try:
            with self._run_scope:
                await self._run(task_status)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                self._stopped = True  # cancelled from outside: the iterator ends
                self._wake()
                raise
            error = exc
            if isinstance(exc, Exception) and not isinstance(exc, EventBusError):
                error = translate(exc, self._settings.address, self._settings.user)
            self._fail(error)
            if error is exc:
                raise
            raise error from exc
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish()
            self._run_done.set()

    async def _run(self, task_status: TaskStatus[None]) -> None:
        # Nothing is raised inside the task group: anyio would wrap it in an ExceptionGroup,
        # and the core (and the CLI's exit code) must see the error itself.
        deadline = anyio.current_time() + self._settings.join_timeout
        with anyio.move_on_at(deadline) as joining:
            await self._start_consumer()
        if joining.cancelled_caught:
            raise self._join_timed_out()
        fetcher = self._fetcher
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._fetch)
            if self._group is not None:
                tasks.start_soon(self._commit_loop)
            with anyio.move_on_at(deadline):
                await _first_of(fetcher.live, self._fetch_done)
            # Live, or stopped before that (nothing will come: the iterator just ends).
            if self._fetch_done.is_set() or fetcher.live.is_set():
                if fetcher.failure is None:
                    task_status.started()
                    await self._fetch_done.wait()  # until stopped, or the fetch loop gave up
                if fetcher.failure is None:
                    await anyio.sleep_forever()  # what is handed out still commits; until close
            tasks.cancel_scope.cancel()
        if fetcher.failure is not None:
            raise fetcher.failure
        if not (self._fetch_done.is_set() or fetcher.live.is_set()):
            raise self._join_timed_out()

    def _join_timed_out(self) -> BrokerUnavailableError:
        what = f"join consumer group {self._group!r}" if self._group else "assign"
        return BrokerUnavailableError(
            self._settings.address,
            f"could not {what} for topics {self._topics} within "
            f"join_timeout={self._settings.join_timeout}s",
        )

    async def _start_consumer(self) -> None:
        consumer = new_consumer(self._settings, self._group)
        self._consumer = self._fetcher.consumer = consumer
        if self._group is None:
            self._owned.assign(await assign_everything(consumer, self._topics, self._admin))
            return
        listener = Revocation(
            consumer,
            self._owner,
            owned=self._owned,
            pauses=self._pauses,
            buffer=self._buffer,
            handed_out=self._handed_out,
            committer=self._committer,
            drain_timeout=self._settings.revoke_drain_timeout,
            closing=lambda: self._closed,
            describe=self._describe(),
        )
        consumer.subscribe(self._topics, listener=listener)
        await consumer.start()  # returns once the group is joined

    async def _fetch(self) -> None:
        try:
            with self._fetch_scope:
                self._fetching = True
                if not self._stopped:
                    await self._fetcher.run()
            if self._fetcher.failure is not None:
                self._fail(self._fetcher.failure)
        finally:
            self._fetch_done.set()

    async def _commit_loop(self) -> None:
        while True:
            await anyio.sleep(self._settings.commit_interval)
            if not self._owned.rebalancing:
                pending = pending_commits(self._owned.trackers)
                await self._committer.commit(self._consumer, pending, None)

    def _fail(self, exc: BaseException) -> None:
        """``run`` is over for a reason other than `close`: the iterator raises it, and what is
        handed out can no longer be settled (the core treats it all as lost)."""
        if self._failure is None and not self._closed:
            self._failure = exc
        self._wake()

    def _wake(self) -> None:
        """Make a waiting iterator (and a draining revocation) look at the state again."""
        self._buffer.ready.set()
        self._handed_out.left.set()

    @property
    def connected(self) -> bool:
        return self._failure is None and not self._closed and self._fetcher.connected

    def pause(self) -> None:
        self._pauses.requested = True
        self._fetcher.apply_pauses()

    def resume(self) -> None:
        self._pauses.requested = False
        self._fetcher.apply_pauses()
        self._buffer.ready.set()  # what was read ahead before the pause goes out again

    async def stop(self) -> None:
        """Stop fetching; deliveries handed out can still be settled, and are committed."""
        if self._stopped:
            return
        self._stopped = True
        self._wake()
        self._fetch_scope.cancel()
        if self._fetching:
            await self._fetch_done.wait()
        # No more network fetches; heartbeats go on, so the group keeps us until close.
        self._pauses.stopped = True
        try:
            self._fetcher.apply_pauses()
        except Exception:
            log.debug("%s: pause on stop failed", self._describe(), exc_info=True)

    async def close(self) -> None:
        """Commit what is safe, leave the group, end `run`. Unsettled records stay uncommitted
        and are redelivered to whoever consumes their partition next."""
        if self._closed:
            return
        await self.stop()
        self._closed = True
        self._wake()
        if self._running:
            self._run_scope.cancel()
            await self._run_done.wait()
        else:
            await self._finish()
        if self._on_close is not None:
            self._on_close(self)

    async def _finish(self) -> None:
        """Once: commit what is safe (unless `run` failed), forget every tracked record (so
        settles become no-ops), report what the core still held as lost, and stop the
        consumer, leaving the group."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        self._stopped = True
        if self._failure is None and self._group is not None and not self._owned.rebalancing:
            pending = pending_commits(self._owned.trackers)
            await self._committer.commit(consumer, pending, _COMMIT_TIMEOUT)
        lost = self._handed_out.detach_all()
        self._owned.revoke_all()
        self._buffer.clear()
        self._wake()
        if lost:
            # Still in the core's hands (after a failure, say): stop the work on them before
            # leaving the group hands their partitions to another consumer (SPI: lost first).
            await self._owner.lost(lost)
        try:
            with anyio.fail_after(_LEAVE_TIMEOUT):
                await consumer.stop()
        except Exception:
            log.warning("%s: consumer did not stop cleanly", self._describe(), exc_info=True)

    # -- handing out ------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Sequence[RawDelivery]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Sequence[RawDelivery]]:
        buffer, handed_out = self._buffer, self._handed_out
        while True:
            if self._failure is not None:
                raise self._failure
            if self._stopped:
                return
            if self._pauses.requested:
                buffer.ready.clear()  # resume sets it
                await buffer.ready.wait()
                continue
            room = self._prefetch - handed_out.count
            if room <= 0:
                # The core never holds more than ``prefetch``; this keeps the promise for any
                # other caller of the SPI.
                handed_out.left.clear()
                await handed_out.left.wait()
                continue
            batch = self._hand_out(buffer.take(room, self._owned.current))
            if not batch:
                buffer.ready.clear()
                await buffer.ready.wait()
                continue
            yield batch

    def _hand_out(self, taken: list[Taken]) -> list[KafkaDelivery]:
        batch = [
            KafkaDelivery(self, t, t.message)
            if t.message is not None
            else KafkaDelivery(self, t, *self._message_of(t))
            for t in taken
        ]
        self._handed_out.add_all(batch)
        return batch

    def _message_of(self, taken: Taken) -> tuple[Message, str | None]:
        """The record as a message, and what could not be read of it (the core dead-letters
        such a record with what was recovered: never lost to a decoding bug)."""
        try:
            return taken.to_message(self._spec.name), None
        except Exception as exc:
            log.exception("%s: cannot read record %r", self._describe(), taken.record)
            record = taken.record
            message = Message(
                id=f"{record.topic}/{record.partition}/{record.offset}",
                topic=self._spec.name,
                body=record.value or b"",
            )
            return message, f"cannot read the record: {exc!r}"

    def settled(self, delivery: KafkaDelivery, *, done: bool) -> None:
        """Called once per delivery by `KafkaDelivery.ack` / ``release``."""
        if not self._handed_out.settle(delivery):
            return  # reported lost, or the subscription is over: not ours to settle
        taken = delivery.taken
        if done:
            taken.tracker.finish(taken.offset)
        elif self._owned.current(taken.tracker) and not self._stopped:
            # Released while running: hand it out again. It stays unfinished meanwhile, so no
            # commit passes it; after stop it just stays unfinished (redelivered after restart).
            taken.redelivered = True
            self._buffer.push_front(taken)

    def _describe(self) -> str:
        who = f"group {self._group}" if self._group else "broadcast"
        return f"kafka {self._spec.kind} {self._spec.name} ({who})"


async def _first_of(*events: anyio.Event) -> None:
    """Return once any of ``events`` is set."""
    async with anyio.create_task_group() as waiting:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            waiting.cancel_scope.cancel()

        for event in events:
            waiting.start_soon(wait, event)
