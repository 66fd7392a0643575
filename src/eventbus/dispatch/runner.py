"""One subscription's consume loop: fetch -> key lane -> decode -> dedup -> handler -> settle.

This is the single dispatch pipeline every transport runs under (DESIGN 5). The rules it keeps
(DESIGN 3): a message is settled only after its handler finished with it; a failure is retried
with backoff, then dead-lettered; a poison message is dead-lettered and the loop goes on;
nothing unsettled is ever acked at shutdown.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import TaskGroup, TaskStatus

from eventbus import headers as h
from eventbus.codecs.base import Codec, DecodeError
from eventbus.dedup.base import ClaimResult, InboxStore
from eventbus.dispatch.deadletter import DeadLetterReason, dead_letter_message
from eventbus.dispatch.lanes import KeyLanes
from eventbus.dispatch.settle import DeliveryState
from eventbus.dispatch.slots import Slots
from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import LeaseLostError, Reject, Retry
from eventbus.message import Delivery, Message
from eventbus.transports.base import Destination, Subscription, Transport

__all__ = ["Handler", "Middleware", "SubscriptionRunner"]

log = logging.getLogger("eventbus.dispatch")

Handler = Callable[[Delivery], Awaitable[None]]
"""What middleware wraps: a call that handles one delivery (payload already bound)."""
Middleware = Callable[[Handler], Handler]
"""``Callable[[Handler], Handler]``; the first middleware given is the outermost."""

_REPUBLISH_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
_REQUEUED_LIMIT = 10_000
_STORE_BACKOFF = (0.1, 0.5, 2.0)
_ROUTING_HEADERS = (h.TARGET_GROUP, h.NOT_BEFORE)


class SubscriptionRunner:
    """Runs one `Subscriber` over one transport subscription until told to stop."""

    def __init__(
        self,
        subscriber: Subscriber,
        transport: Transport,
        codec: Codec,
        middleware: Sequence[Middleware] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.subscriber = subscriber
        self._transport = transport
        self._codec = codec
        self._middleware = tuple(middleware)
        self._rng = rng or random.Random()
        self._limiter = Slots(subscriber.concurrency)
        self._in_flight = 0
        """Fetched and not settled; bounded by ``max_in_flight`` (DESIGN 3.7)."""
        self._room: anyio.Event | None = None
        """Set when a settle frees room while the fetcher waits for it."""
        self._lanes: KeyLanes[DeliveryState] | None = None
        # A dict as an ordered set: `_release_unsettled` needs the fetch order.
        self._unsettled: dict[DeliveryState, None] = {}
        self._busy: set[DeliveryState] = set()
        self._requeued: dict[str, int] = {}
        """Next attempt of broadcast messages sent back by `redeliver`, by message id."""
        self._stopping = False
        self._stop_event = anyio.Event()
        self._quiet = anyio.Event()
        self._abort = anyio.Event()
        self.closed = anyio.Event()
        self._sub: Subscription | None = None
        self._work: TaskGroup | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe (live once ``task_status.started()`` fires), then consume until aborted."""
        try:
            self._sub = await self._transport.subscribe(self.subscriber.spec)
        except BaseException:
            self.closed.set()
            raise
        try:
            # Shielded: only `abort` (after the drain) ends the work. Otherwise cancelling the
            # scope that hosts the bus -- a cancelled `bus.run()`, which is how the CLI stops on
            # SIGTERM -- would cancel in-flight handlers at once instead of draining (DESIGN 3.8).
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as work:
                    self._work = work
                    lanes: KeyLanes[DeliveryState] = KeyLanes(
                        work, self._handle, lambda: not self._stopping, self.subscriber.concurrency
                    )
                    self._lanes = lanes
                    work.start_soon(self._fetch, self._sub, lanes)
                    task_status.started()
                    await self._abort.wait()
                    # Past the graceful timeout: cancel what still runs. Its messages stay
                    # unsettled and are released below, so they are redelivered, never acked.
                    work.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release_unsettled()
                try:
                    await self._sub.close()
                except Exception:
                    log.exception("%s: closing the subscription failed", self.subscriber.describe())
                self.closed.set()

    async def drain(self) -> None:
        """Stop fetching and wait until every started handler finished and every started
        manual-ack delivery is settled. Unstarted deliveries are left for `abort` to release."""
        self._stopping = True
        self._stop_event.set()
        if self._sub is not None:
            try:
                await self._sub.stop()
            except Exception:
                log.exception("%s: stopping the subscription failed", self.subscriber.describe())
        if self._room is not None:
            self._room.set()  # a fetcher waiting for room sees the stop
        if not self._busy:
            self._quiet.set()
        await self._quiet.wait()

    def abort(self) -> None:
        """End `run`: cancel remaining work, release what is unsettled, close."""
        self._stopping = True
        self._stop_event.set()
        self._abort.set()

    async def _release_unsettled(self) -> None:
        # Newest first: a transport that puts a released message back at the front of its
        # partition (memory) then restores the original order, so same-key messages reach the
        # next consumer in publish order (DESIGN 3.5), as its own close does.
        for state in reversed(list(self._unsettled)):
            if state.settled:
                continue
            state.settled = True
            try:
                await state.raw.release()
            except Exception:
                log.exception("%s: release failed", self.subscriber.describe())
            self.forget(state)

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch(self, sub: Subscription, lanes: KeyLanes[DeliveryState]) -> None:
        stats = self.subscriber.stats
        limit = self.subscriber.max_in_flight
        iterator = sub.__aiter__()
        while not self._stopping:
            # Bound what is fetched but unsettled (DESIGN 3.7): wait for room before pulling.
            # A counter and an event rather than a semaphore: this runs once per message.
            while self._in_flight >= limit:
                self._room = anyio.Event()
                await self._room.wait()
                if self._stopping:
                    return
            try:
                raw = await iterator.__anext__()
            except StopAsyncIteration:
                return
            stats.received += 1
            state = DeliveryState(self, raw)
            if self._requeued:
                state.attempt = max(state.attempt, self._requeued.pop(raw.message.id, 0))
            self._unsettled[state] = None
            self._in_flight += 1
            if self._stopping:
                continue  # fetched during stop: released, not started
            lanes.submit(raw.message.key, state)

    def forget(self, state: DeliveryState) -> None:
        """Called once a delivery is settled: frees its in-flight room."""
        if state in self._unsettled:
            del self._unsettled[state]
            self._in_flight -= 1
            if self._room is not None:
                self._room.set()
                self._room = None
        self._leave_busy(state)

    def _leave_busy(self, state: DeliveryState) -> None:
        self._busy.discard(state)
        if self._stopping and not self._busy:
            self._quiet.set()

    # -- handling ---------------------------------------------------------------------------

    async def _handle(self, state: DeliveryState) -> None:
        if self._stopping:
            return
        self._busy.add(state)
        keep_busy = False
        try:
            keep_busy = await self._attempts(state)
        except Exception:
            # Nothing may escape the worker; the message stays unsettled and is redelivered.
            log.exception(
                "%s: internal error handling %s", self.subscriber.describe(), state.raw.message.id
            )
        finally:
            if not keep_busy or state.settled:
                self._leave_busy(state)

    async def _attempts(self, state: DeliveryState) -> bool:
        """Run attempts until the message is settled or parked. Returns True when a manual-ack
        delivery is left for the user to settle (it stays busy for graceful shutdown)."""
        sub = self.subscriber
        message = state.raw.message
        target = message.headers.get(h.TARGET_GROUP)
        if target and sub.group and target != sub.group:
            await state.ack()  # meant for another group of this topic (retry or replay)
            return False
        if target or h.NOT_BEFORE in message.headers:
            # Routing headers are for this hop only: a handler that republishes the message
            # must not make other groups skip it.
            message = message.replace_headers(
                {k: v for k, v in message.headers.items() if k not in _ROUTING_HEADERS}
            )
        try:
            payload = self._decode(message)
        except DecodeError as exc:
            log.error("%s: undecodable message %s: %s", sub.describe(), message.id, exc)
            await state.fail("undecodable", exc)
            return False

        while True:
            if self._stopping:
                return False
            if sub.dedup is not None and not await self._claim(state):
                return False
            delivery = Delivery(
                message,
                attempt=state.attempt,
                redelivered=state.raw.redelivered or state.attempt > 1,
                settler=state,
            )
            try:
                await self._limiter.acquire()
                try:
                    await self._invoke(delivery, payload, state)
                finally:
                    self._limiter.release()
            except Exception as exc:
                state.ack_deferred = False  # an ack inside a rolled-back inbox never happened
                if isinstance(exc, LeaseLostError):
                    # Another worker took the key over while this one worked; nothing was
                    # committed. Claim again without spending an attempt: DONE or BUSY decides.
                    log.info("%s: lease lost on %s; claiming again", sub.describe(), message.id)
                    state.claim_owner = None
                    continue
                sub.stats.failed_attempts += 1
                if state.settled:
                    log.warning(
                        "%s: handler raised after settling %s: %r", sub.describe(), message.id, exc
                    )
                    return False
                await self.release_claim(state)
                delay = self._next_delay(exc, state.attempt)
                if delay is None:
                    reason: DeadLetterReason = (
                        "retries-exhausted" if self._retryable(exc) else "rejected"
                    )
                    log.warning(
                        "%s: dead-lettering %s after attempt %d (%s): %r",
                        sub.describe(),
                        message.id,
                        state.attempt,
                        reason,
                        exc,
                    )
                    await state.fail(reason, exc)
                    return False
                sub.stats.retried += 1
                broadcast = sub.kind == "topic" and sub.group is None
                if sub.retry.via_broker and not broadcast:
                    await state.retry_via_broker(delay)
                    return False
                log.info(
                    "%s: attempt %d of %s failed (%r); retrying in %.3fs",
                    sub.describe(),
                    state.attempt,
                    message.id,
                    exc,
                    delay,
                )
                # The key lane waits here without a concurrency slot; other keys flow.
                if await self._sleep_unless_stopping(delay):
                    return False
                state.attempt += 1
                continue
            sub.stats.handled += 1
            if state.settled:
                return False
            if sub.ack == "auto" or state.ack_deferred:
                await state.ack()
                return False
            if sub.ack_timeout is not None and self._work is not None:
                self._work.start_soon(self._expire, state, sub.ack_timeout)
            return True

    def _decode(self, message: Message) -> object:
        target = self.subscriber.handler.payload_type
        if target is None or target is Message:
            return message
        return self._codec.decode(message, target)

    def _retryable(self, exc: Exception) -> bool:
        return not isinstance(exc, Reject) and (
            isinstance(exc, Retry) or self.subscriber.retry.retryable(exc)
        )

    def _next_delay(self, exc: Exception, attempt: int) -> float | None:
        """Seconds until the next attempt, or None to dead-letter now."""
        policy = self.subscriber.retry
        if not self._retryable(exc) or attempt >= policy.max_attempts:
            return None
        if isinstance(exc, Retry) and exc.delay is not None:
            return exc.delay
        return policy.delay(attempt, self._rng)

    async def _invoke(self, delivery: Delivery, payload: object, state: DeliveryState) -> None:
        sub = self.subscriber
        spec = sub.handler
        store = sub.dedup
        if spec.is_async and spec.inbox_type is None and not self._middleware:
            # The common case, without the two closures below (this runs once per message).
            await spec.func(**spec.kwargs(payload, delivery))
            return

        async def call(d: Delivery) -> None:
            if spec.inbox_type is not None and isinstance(store, InboxStore):
                assert state.claim_owner is not None
                state.inbox_open = True
                try:
                    async with store.inbox(
                        sub.scope,
                        self._dedup_key(d.message),
                        owner=state.claim_owner,
                        ttl=sub.dedup_ttl,
                    ) as resource:
                        await _call(spec.kwargs(payload, d, resource))
                finally:
                    state.inbox_open = False
                state.inbox_done = True
            else:
                await _call(spec.kwargs(payload, d))

        async def _call(kwargs: dict[str, object]) -> None:
            if spec.is_async:
                await spec.func(**kwargs)
            else:
                # A blocking handler would stall every other handler of the process.
                result = await anyio.to_thread.run_sync(functools.partial(spec.func, **kwargs))
                if inspect.isawaitable(result):
                    # A plain `def` returning a coroutine (a decorator's sync wrapper around an
                    # async handler): unless awaited, its body never runs and the message would
                    # be acked unhandled (DESIGN 3.1).
                    await result

        handler: Handler = call
        for middleware in reversed(self._middleware):
            handler = middleware(handler)
        await handler(delivery)

    async def _expire(self, state: DeliveryState, after: float) -> None:
        # Ends as soon as the delivery is settled, so timers do not pile up under load.
        with anyio.move_on_after(after):
            await state.wait_settled()
        await state.expire()

    async def _sleep_unless_stopping(self, seconds: float) -> bool:
        """Sleep without a worker's turn (others start meanwhile); True if the subscription
        started stopping meanwhile."""
        with self._lanes.parked() if self._lanes is not None else contextlib.nullcontext():
            with anyio.move_on_after(seconds):
                await self._stop_event.wait()
        return self._stopping

    # -- deduplication ----------------------------------------------------------------------

    def _dedup_key(self, message: Message) -> str:
        key_of = self.subscriber.dedup_key
        return key_of(message) if key_of is not None else message.id

    async def _claim(self, state: DeliveryState) -> bool:
        """True when this attempt may run the handler. A key already done is acked and skipped;
        a key another worker is processing is waited for (its claim completes or expires)."""
        sub = self.subscriber
        assert sub.dedup is not None
        key = self._dedup_key(state.raw.message)
        owner = uuid.uuid4().hex
        wait = 0.05
        while True:
            try:
                result = await sub.dedup.claim(sub.scope, key, owner=owner, lease=sub.dedup_lease)
            except Exception as exc:
                # A store outage must not strand the message in flight: wait and ask again.
                log.warning("%s: dedup store claim failed: %r; retrying", sub.describe(), exc)
                if await self._sleep_unless_stopping(wait):
                    return False
                wait = min(wait * 2, 5.0)
                continue
            if result is ClaimResult.CLAIMED:
                state.claim_owner = owner
                return True
            if result is ClaimResult.DONE:
                sub.stats.duplicates += 1
                await state.ack()
                return False
            if await self._sleep_unless_stopping(wait):
                return False
            wait = min(wait * 2, 1.0)

    async def complete_claim(self, state: DeliveryState) -> None:
        sub = self.subscriber
        if sub.dedup is None or state.claim_owner is None:
            return
        owner, state.claim_owner = state.claim_owner, None
        if state.inbox_done:
            return
        key = self._dedup_key(state.raw.message)
        for pause in (*_STORE_BACKOFF, None):
            try:
                await sub.dedup.complete(sub.scope, key, owner=owner, ttl=sub.dedup_ttl)
                return
            except Exception as exc:
                if pause is None:
                    # The handler's effect happened: ack anyway (a release would run it again
                    # now). Only a copy published later could slip through, once.
                    log.error(
                        "%s: cannot record %s as done in the dedup store (%r); acking anyway",
                        sub.describe(),
                        key,
                        exc,
                    )
                    return
                await anyio.sleep(pause)

    async def release_claim(self, state: DeliveryState) -> None:
        """After a failure: let a retry (here or in another worker) claim the key again."""
        sub = self.subscriber
        if sub.dedup is None or state.claim_owner is None:
            return
        owner, state.claim_owner = state.claim_owner, None
        try:
            await sub.dedup.release(sub.scope, self._dedup_key(state.raw.message), owner=owner)
        except Exception as exc:
            log.warning(
                "%s: dedup release failed (%r); the claim frees itself when its lease ends",
                sub.describe(),
                exc,
            )

    # -- settling through the broker --------------------------------------------------------

    async def dead_letter(
        self, state: DeliveryState, reason: DeadLetterReason, error: BaseException
    ) -> None:
        sub = self.subscriber
        if sub.dead_letter is None:
            log.error(
                "%s: dropping message %s (%s; dead_letter=None): %r",
                sub.describe(),
                state.raw.message.id,
                reason,
                error,
            )
            await state.raw.ack()
            sub.stats.dead_lettered += 1
            return
        letter = dead_letter_message(
            state.raw.message,
            reason=reason,
            error=error,
            kind=sub.kind,
            group=sub.group,
            attempts=state.attempt,
            native=state.raw.native,
        )
        await self._publish_then_ack(state, Destination(sub.dead_letter, "queue"), letter)
        # Counted once the dead letter is confirmed in its queue, so that whoever waits for
        # the count (tests, the DLQ commands) finds it there.
        sub.stats.dead_lettered += 1

    async def redeliver(self, state: DeliveryState, delay: float) -> None:
        """Send the message back through the broker for the next attempt, to this group only.
        Broadcast subscriptions have no group to target: the transport requeues it instead."""
        sub = self.subscriber
        if sub.kind == "topic" and sub.group is None:
            # A requeued message comes back unchanged, so the attempt count cannot travel in it;
            # this runner lives as long as the ephemeral subscription and keeps it instead.
            # Without it a nack or ack_timeout loop on a broadcast never ends (DESIGN 3.4).
            self._requeued[state.raw.message.id] = state.attempt + 1
            if len(self._requeued) > _REQUEUED_LIMIT:  # a message that never came back
                del self._requeued[next(iter(self._requeued))]
            await state.raw.release()
            return
        sub.stats.redelivered += 1
        message = state.raw.message
        extra = {h.ATTEMPT: str(state.attempt + 1)}
        if sub.group is not None:
            extra[h.TARGET_GROUP] = sub.group
        to = Destination(sub.name, sub.kind, group=sub.group, delay=max(0.0, delay))
        await self._publish_then_ack(
            state, to, message.replace_headers({**message.headers, **extra})
        )

    async def _publish_then_ack(
        self, state: DeliveryState, to: Destination, message: Message
    ) -> None:
        # Publish first, ack second: a crash in between duplicates the message, never loses it.
        for attempt, pause in enumerate((*_REPUBLISH_BACKOFF, None), start=1):
            try:
                await self._transport.publish(to, [message])
                break
            except Exception as exc:
                if pause is None or self._stopping:
                    log.error(
                        "%s: cannot publish %s to %s (%r); leaving it unacked for redelivery",
                        self.subscriber.describe(),
                        message.id,
                        to.name,
                        exc,
                    )
                    await state.raw.release()
                    return
                log.warning(
                    "%s: publish to %s failed (try %d): %r",
                    self.subscriber.describe(),
                    to.name,
                    attempt,
                    exc,
                )
                await anyio.sleep(pause)
        await state.raw.ack()
