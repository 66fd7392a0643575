"""Running one batch (``batch=``, DESIGN 11): per-item checks, the handler once, per-item settling.

Each delivery of the batch goes through the same checks as a single one -- unreadable, expired,
undecodable, its ``dedup_key`` and claim -- and what fails them is settled on its own; the rest
goes to the handler as one list. Then:

- The handler returns: every item it did not settle is acked. One it ``nack()``-ed goes back
  through the broker (or is dead-lettered, attempts spent); one it ``reject()``-ed is
  dead-lettered. Items settle only once the handler returned, in batch order, so the later
  items of a nacked item's key are not acked: they come back after it, in order, spending no
  attempt. The transports coalesce the acks (RabbitMQ ``multiple``, Kafka one commit).
- The handler raises: the retry policy applies to the batch, item by item (each has its own
  attempt count) through `outcome.decide`, and what it settles on the handler's behalf is
  dropped. Items retried in process run again together after the longest delay, less those
  that expired meanwhile (dead-lettered or dropped, as before a first attempt); the others
  are redelivered or dead-lettered at once.

A handler that takes the inbox resource runs in one transaction for the batch
(`BatchInboxStore.inbox_many`): every item's key is recorded done when it commits, and items
are settled one by one only by raising (``nack``/``reject`` inside it are refused, as for one
message). Not applied to batch handlers in this release: the middleware chain, which wraps one
message (tracing and the metrics' histograms have their own per call: `BatchSpan`,
`BatchTimer`); ``breaker`` guards each call as it guards one message's attempt. ``ack='manual'``
and ``publish_to``/``send_to`` are refused at decoration time.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import anyio

from eventbus import headers as h
from eventbus.dedup.base import BatchInboxStore
from eventbus.dispatch.breaker import HELD_FAILURES, Breaker, HeldError
from eventbus.dispatch.decode import Decoder
from eventbus.dispatch.dedup_guard import DedupGuard, KeyRefusedError
from eventbus.dispatch.expiry import settled_expired
from eventbus.dispatch.invoke import call_handler
from eventbus.dispatch.observe import BatchCall
from eventbus.dispatch.outcome import DeadLetter, RetryInProcess, RetryViaBroker, decide
from eventbus.dispatch.prepare import NOT_HANDLED, prepare
from eventbus.dispatch.settle import DeliveryState, NackedError
from eventbus.dispatch.slots import Slots
from eventbus.dispatch.subscriber import Subscriber
from eventbus.dispatch.throttle import Throttle
from eventbus.dispatch.timeout import within
from eventbus.errors import LeaseLostError, Reject
from eventbus.loggers import get_logger
from eventbus.message import Delivery, Message

__all__ = ["BatchItem", "BatchRunner", "BatchSpan", "BatchTimer"]

log = get_logger("eventbus.dispatch")

_ACK = ("ack", None)

BatchSpan = Callable[[Sequence[Message], int], AbstractContextManager[object]]
"""Opens the tracing span around one call of a batch handler (`eventbus.tracing`), given the
batch's messages and the attempt."""

BatchTimer = Callable[[Sequence[Message], Callable[[], Awaitable[object]]], Awaitable[None]]
"""Runs one call of a batch handler observing the metrics' histograms
(`eventbus.metrics.recorder.SubscriptionMetrics.timed_batch`)."""


class BatchItem:
    """The settler behind one `Delivery` of a batch: it records what the handler decided;
    `BatchRunner` carries it out once the handler returned."""

    __slots__ = ("payload", "state", "verdict")

    def __init__(self, state: DeliveryState, payload: object) -> None:
        self.state = state
        self.payload = payload
        self.verdict: tuple[str, object] | None = None

    @property
    def settled(self) -> bool:
        return self.verdict is not None or self.state.settled

    async def ack(self) -> None:
        if self.verdict is None:
            self.verdict = _ACK

    async def nack(self, delay: float | None) -> None:
        self.state.refuse_inside_inbox("nack")
        if self.verdict is None:
            self.verdict = ("nack", delay)

    async def reject(self, reason: str | None) -> None:
        self.state.refuse_inside_inbox("reject")
        if self.verdict is None:
            self.verdict = ("reject", reason)


@dataclass(slots=True)
class BatchRunner:
    """Carries batches of one subscription through their attempts (see the module doc)."""

    subscriber: Subscriber
    decoder: Decoder
    guard: DedupGuard | None
    throttle: Throttle | None
    limiter: Slots
    rng: random.Random
    stopping: Callable[[], bool]
    sleep: Callable[[float], Awaitable[bool]]
    """Sleep unless stopping; True when the subscription started stopping meanwhile."""
    aborted: Callable[[], bool]
    """Past the graceful timeout: a cancellation now is the bus's own, not the handler's."""
    breaker: Breaker | None
    stop: anyio.Event
    """Set when the subscription starts stopping (ends a wait for the breaker)."""
    span: BatchSpan | None = None
    timed: BatchTimer | None = None
    returned: Callable[[list[DeliveryState]], None] = lambda _states: None
    """Told when the handler returned, before the items are settled (`BatchLanes.returned`)."""

    async def run(self, states: list[DeliveryState]) -> None:
        sub = self.subscriber
        items = await self._all_checked(states)
        checked = True  # just now, above
        held_failures = 0  # failures the circuit breaker held, spending no attempt
        while items and not self.stopping():
            if not checked:  # a later attempt: what expired meanwhile is not run again
                items = await self._unexpired(items)
                if not items:
                    return
            checked = False
            if await self._turns(items):
                return  # stopping while waiting: released, not started
            items = await self._claimed(items)
            if not items:
                return
            for item in items:
                item.verdict = None
            error = await self._call(items)
            if isinstance(error, HeldError):
                # As for one message (runner.py): the breaker is open, the same attempt runs
                # again once it closes; past its share of free failures the batch's failures
                # spend attempts again.
                held_failures += error.error is not None
                limit = HELD_FAILURES * sub.options.retry.max_attempts
                if error.error is None or held_failures <= limit:
                    if error.error is not None:
                        sub.stats.failed_attempts += len(items)
                    if await self._wait_for_breaker(items):
                        return
                    continue
                error = error.error
            if isinstance(error, LeaseLostError):
                # Another worker took a key over while this batch ran; nothing was committed.
                # Claim again without spending an attempt: done keys are acked, the rest runs.
                log.info("%s: a lease was lost in a batch; claiming again", sub.describe())
                for item in items:
                    item.state.claim_owner = None
                continue
            if error is None:
                self.returned([item.state for item in items])
                self.subscriber.stats.handled += len(items)
                # Handled: what the handler decided is carried out even when part of the batch
                # was lost meanwhile (a synchronous handler outlives the cancel), or the other
                # items would be handled again. Settling lost ones does nothing.
                with anyio.CancelScope(shield=True):
                    await self._settle(items)
                return
            items = await self._failed(items, error)

    # -- before the handler -----------------------------------------------------------------

    async def _all_checked(self, states: list[DeliveryState]) -> list[BatchItem]:
        # The usual item -- readable, no expiry, a codec with nothing to await, no dedup --
        # is decoded in this loop: per item, a coroutine would cost as much as the rest.
        decoder = self.decoder
        fast = decoder.immediate and self.guard is None
        items: list[BatchItem] = []
        for state in states:
            if state.settled:
                continue  # lost to the transport while it waited for this batch
            raw = state.raw
            if fast and raw.defect is None and h.EXPIRES_AT not in raw.message.headers:
                try:
                    items.append(BatchItem(state, decoder.decode_now(raw.message)))
                    continue
                except Exception:  # `_checked` decodes it again and settles it
                    pass
            item = await self._checked(state)
            if item is not None:
                items.append(item)
        return items

    async def _checked(self, state: DeliveryState) -> BatchItem | None:
        """The item to hand to the handler, or None when ``state`` was settled on its own."""
        if state.settled:
            return None
        payload = await prepare(self.subscriber, state, self.decoder, self.guard)
        return None if payload is NOT_HANDLED else BatchItem(state, payload)

    async def _unexpired(self, items: list[BatchItem]) -> list[BatchItem]:
        """``items`` without those past their expiry, settled (`settled_expired`)."""
        sub = self.subscriber
        return [
            item
            for item in items
            if h.EXPIRES_AT not in item.state.raw.message.headers
            or not await settled_expired(sub, item.state)
        ]

    async def _turns(self, items: list[BatchItem]) -> bool:
        """A turn of the rate limit per item (each is a message handled); True if stopping."""
        if self.throttle is not None:
            for _ in items:
                if await self.throttle.take():
                    return True
        return False

    async def _claimed(self, items: list[BatchItem]) -> list[BatchItem]:
        """Claim each item's dedup key; duplicates are acked and left out.

        Keys are claimed in sorted order, so two batches that share keys (the same message
        published twice) never wait for each other in a circle. A key twice in one batch is
        claimed once: the second item stays out, unsettled, goes into the next batch and is
        skipped there as done (claiming it here would wait for this batch's own claim)."""
        guard = self.guard
        if guard is None:
            return items
        run: set[int] = set()
        claimed: set[str] = set()
        for index in sorted(range(len(items)), key=lambda i: items[i].state.dedup_key or ""):
            state = items[index].state
            key = state.dedup_key
            assert key is not None
            if key in claimed:
                continue
            try:
                claim, state.claim_owner = await guard.claim(key)
            except KeyRefusedError as exc:
                log.error("%s: %s", self.subscriber.describe(), exc)
                await state.fail("internal", exc)
                continue
            if claim == "done":
                await state.ack()
            elif claim == "run":
                claimed.add(key)
                run.add(index)
            else:
                return []  # stopping: released, not started
        return [item for index, item in enumerate(items) if index in run]

    # -- the handler ------------------------------------------------------------------------

    async def _call(self, items: list[BatchItem]) -> BaseException | None:
        """Run the handler once on ``items``; what it raised, or None."""
        sub = self.subscriber
        spec = sub.handler
        deliveries: list[Delivery] | None = None
        if spec.takes_deliveries or sub.observer is not None:
            deliveries = [
                Delivery(
                    item.state.raw.message,
                    attempt=item.state.attempt,
                    redelivered=item.state.raw.redelivered or item.state.attempt > 1,
                    settler=item,
                    payload=item.payload,
                )
                for item in items
            ]
        messages = [item.state.raw.message for item in items]
        payloads = [item.payload for item in items]
        kwargs = spec.batch_kwargs(payloads, messages, deliveries)
        timeout = sub.options.timeout
        attempt = max(item.state.attempt for item in items)

        span, timed = self.span, self.timed

        async def handle() -> None:
            if spec.inbox_type is None:
                await call_handler(spec, kwargs)
            else:
                await self._in_inbox(items, kwargs)

        async def traced() -> None:
            if span is None:
                await handle()
            else:
                with span(messages, attempt):
                    await handle()

        async def timed_call() -> None:
            if timed is None:
                await traced()
            else:
                await timed(messages, traced)

        call = timed_call
        if self.breaker is not None:
            guarded = self.breaker.guard(lambda _: timed_call())

            async def call() -> None:
                await guarded(None)

        try:
            await self.limiter.acquire()
            try:
                if timeout is None:
                    await call()
                else:
                    await within(timeout, call, sub, attempt)
            finally:
                self.limiter.release()
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()) and (
                self.aborted() or any(item.state.lost for item in items)
            ):
                raise  # the bus's own: shutdown, or deliveries of the batch lost
            if not isinstance(exc, HeldError):
                self._tell(items, deliveries, kwargs, exc)
            elif exc.error is not None:  # it ran and failed while the breaker tripped
                self._tell(items, deliveries, kwargs, exc.error)
            return exc
        self._tell(items, deliveries, kwargs, None)
        return None

    async def _in_inbox(self, items: list[BatchItem], kwargs: dict[str, object]) -> None:
        """The handler inside one inbox transaction that records every item's key as done
        when it commits (`BatchInboxStore.inbox_many`)."""
        sub = self.subscriber
        store = sub.options.dedup
        assert isinstance(store, BatchInboxStore)  # checked at decoration time
        claims = [(item.state.dedup_key or "", item.state.claim_owner or "") for item in items]
        for item in items:
            item.state.inbox_open = True
        try:
            async with store.inbox_many(sub.scope, claims, ttl=sub.options.dedup_ttl) as res:
                for name, kind in sub.handler.params:
                    if kind == "inbox":
                        kwargs[name] = res
                await call_handler(sub.handler, kwargs)
        finally:
            for item in items:
                item.state.inbox_open = False
        for item in items:
            item.state.inbox_done = True

    def _tell(
        self,
        items: list[BatchItem],
        deliveries: list[Delivery] | None,
        kwargs: dict[str, object],
        error: BaseException | None,
    ) -> None:
        observer = self.subscriber.observer
        if observer is not None and deliveries is not None:
            pairs = [(item.state.raw, d) for item, d in zip(items, deliveries, strict=True)]
            observer(BatchCall(pairs, kwargs, error))

    async def _wait_for_breaker(self, items: list[BatchItem]) -> bool:
        """Park until the breaker lets attempts through, spending no attempt; True if the
        subscription started stopping meanwhile."""
        assert self.breaker is not None
        for item in items:
            await item.state.release_claim()
        await self.breaker.wait(self.stop)
        return self.stopping()

    # -- after it ---------------------------------------------------------------------------

    async def _settle(self, items: list[BatchItem]) -> None:
        """The handler returned: carry out what it decided per item, in batch order."""
        sub = self.subscriber
        policy = sub.options.retry
        back: dict[str, float] = {}
        """Keys with an item that goes back through the broker: the delay it goes back after.
        Later items of the key go back after it, never sooner (DESIGN 11)."""
        broker_bound: list[Callable[[], Awaitable[None]]] = []
        for item in items:
            state = item.state
            key = state.raw.message.key
            how, arg = item.verdict or _ACK
            if how == "nack":
                error = NackedError(f"nacked on attempt {state.attempt}")
                delay = arg if isinstance(arg, float | int) else None
                outcome = decide(policy, state.attempt, error, "nacked", delay=delay, rng=self.rng)
                if isinstance(outcome, RetryViaBroker) and key is not None:
                    outcome = RetryViaBroker(max(outcome.delay, back.get(key, 0.0)))
                    back[key] = outcome.delay
                broker_bound.append(functools.partial(state.carry_out, outcome, error))
            elif how == "reject":
                reason = arg if isinstance(arg, str) else None
                await state.carry_out(DeadLetter("rejected"), Reject(reason))
            elif key is not None and key in back:
                broker_bound.append(functools.partial(state.put_back, back[key]))
            else:
                await state.ack()
        # A broadcast has no group to send them to: they are requeued, and a requeue may put
        # a message at the front, so the newest goes first to come back last.
        for send_back in reversed(broker_bound) if sub.broadcast else broker_bound:
            await send_back()

    async def _failed(self, items: list[BatchItem], error: BaseException) -> list[BatchItem]:
        """The handler raised: the policy per item. Returns the items to run again, after
        waiting for the longest of their delays; the others are settled here."""
        sub = self.subscriber
        if any(item.state.lost for item in items):
            # Part of the batch was taken back while the handler ran (a synchronous one
            # outlived the cancel): the attempt counts for nothing. The rest stays unsettled
            # and goes into a later batch; settling it here would run into the cancellation.
            return []
        sub.stats.failed_attempts += len(items)
        again: list[BatchItem] = []
        delay = 0.0
        back: dict[str, float] = {}  # as in `_settle`: a key's later items never go sooner
        for item in items:
            state = item.state
            outcome = decide(
                sub.options.retry,
                state.attempt,
                error,
                "raised",
                broadcast=sub.broadcast,
                rng=self.rng,
            )
            if not isinstance(outcome, DeadLetter):
                sub.stats.retried += 1
            if isinstance(outcome, RetryInProcess):
                await state.release_claim()
                again.append(item)
                delay = max(delay, outcome.delay)
                continue
            key = state.raw.message.key
            if isinstance(outcome, RetryViaBroker) and key is not None:
                outcome = RetryViaBroker(max(outcome.delay, back.get(key, 0.0)))
                back[key] = outcome.delay
            await state.carry_out(outcome, error)
        if not again:
            return []
        log.info(
            "%s: a batch of %d failed (%r); retrying %d of them in %.3fs",
            sub.describe(),
            len(items),
            error,
            len(again),
            delay,
        )
        if await self.sleep(delay):
            return []
        for item in again:
            item.state.attempt += 1
        return again
