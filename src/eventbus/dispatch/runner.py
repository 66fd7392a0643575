"""One subscription at work: builds the pipeline once, runs it, and stops it in order.

The pipeline for every transport (DESIGN 5): the consume loop (`consume.py`) fetches within the
in-flight bound (`inflight.py`) and hands each delivery to a key lane (`lanes.py`); a lane
worker runs its attempts (`attempts.py`): decodes it, claims it with the dedup guard
(`dedup_guard.py`), calls the handler through the middleware chain (`invoke.py`) within the
concurrency limit (`slots.py`), and settles it (`settle.py`): ack, or what `outcome.decide`
says follows a failure -- a retry in process, or a redelivery or dead letter through the broker
(`republish.py`). With ``batch=``, `batch_lanes.py` forms batches and `batches.py` runs them.

Deliveries the transport takes back are handled by `ownership.py` (the transport's
`DeliveryOwner`): dropped from the lanes, and work still running on them cancelled.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup, TaskStatus

from eventbus.codecs.base import AsyncCodec, Codec
from eventbus.dispatch.attempts import Attempts
from eventbus.dispatch.batch_lanes import BatchLanes
from eventbus.dispatch.batches import BatchRunner, BatchSpan
from eventbus.dispatch.breaker import Breaker
from eventbus.dispatch.consume import ConsumeLoop
from eventbus.dispatch.current import HANDLING
from eventbus.dispatch.decode import Decoder
from eventbus.dispatch.dedup_guard import DedupGuard
from eventbus.dispatch.inflight import InFlight
from eventbus.dispatch.invoke import Middleware, build_handler
from eventbus.dispatch.lanes import KeyLanes
from eventbus.dispatch.ownership import Ownership
from eventbus.dispatch.republish import Republisher
from eventbus.dispatch.returns import PublishResult
from eventbus.dispatch.settle import DeliveryState, Settling
from eventbus.dispatch.slots import Slots
from eventbus.dispatch.subscriber import Subscriber
from eventbus.dispatch.throttle import Throttle
from eventbus.loggers import get_logger
from eventbus.transports.base import RawDelivery, Transport

if TYPE_CHECKING:
    from eventbus.metrics.recorder import SubscriptionMetrics

__all__ = ["SubscriptionRunner"]

log = get_logger("eventbus.dispatch")


class SubscriptionRunner:
    """Runs one `Subscriber` over one transport subscription until told to stop."""

    def __init__(
        self,
        subscriber: Subscriber,
        transport: Transport,
        codec: Codec | AsyncCodec,
        publish: PublishResult,
        middleware: Sequence[Middleware] = (),
        rng: random.Random | None = None,
        metrics: SubscriptionMetrics | None = None,
        batch_span: BatchSpan | None = None,
    ) -> None:
        self.subscriber = subscriber
        options = subscriber.options
        self._rng = rng or random.Random()
        self._limiter = Slots(options.concurrency)
        self._in_flight: InFlight[DeliveryState] = InFlight(options.in_flight_limit)
        self._stopping = False
        self._stop_event = anyio.Event()
        self._abort = anyio.Event()
        self.closed = anyio.Event()
        self._lanes: KeyLanes[DeliveryState] | None = None
        self._batch_lanes: BatchLanes[DeliveryState] | None = None
        self._work: TaskGroup | None = None
        self._republisher = Republisher(
            subscriber, transport, lambda: self._stopping, self._on_refused
        )
        self.refused: str | None = None
        """Why the broker refuses this subscription's retries or dead letters (permissions), or
        None: while it does, fetching is paused and the bus is not ready (DESIGN 13)."""
        self._guard = (
            DedupGuard(subscriber, options.dedup, self._sleep_unless_stopping)
            if options.dedup is not None
            else None
        )
        self._settling = Settling(
            subscriber, self._in_flight, self._republisher, self._guard, self._rng
        )
        self._handler = build_handler(subscriber, middleware, publish)
        if metrics is not None:
            # Built once here: without metrics the handler chain is exactly what it was.
            self._handler = metrics.timed(self._handler)
            metrics.watch(self._in_flight)
        self._breaker: Breaker | None = None
        if options.breaker is not None:
            # Outermost, built once: without a breaker the chain and the runner are unchanged.
            self._breaker = Breaker(
                options.breaker,
                subscriber,
                lambda: self._consume.pause("breaker"),  # its own: it never undoes another's
                lambda: self._consume.resume("breaker"),
                lambda: self._work,
            )
            self._handler = self._breaker.guard(self._handler)
        self._decoder = Decoder(
            codec,
            subscriber.handler.payload_type,
            self._sleep_unless_stopping,
            subscriber.describe(),
        )
        self._ownership = Ownership(
            subscriber, self._in_flight, lambda: self._lanes or self._batch_lanes
        )
        self._consume = ConsumeLoop(
            subscriber,
            transport,
            self._ownership,
            self._in_flight,
            self._accept,
            self._ownership.lose_all,
        )
        self._throttle = (
            Throttle(
                subscriber,
                options.rate_limit,
                self._stop_event,
                lambda: self._consume.pause("rate-limit"),
                lambda: self._consume.resume("rate-limit"),
            )
            if options.rate_limit is not None
            else None
        )
        self._attempts = Attempts(
            subscriber,
            self._decoder,
            self._guard,
            self._throttle,
            self._limiter,
            self._handler,
            self._rng,
            lambda: self._stopping,
            self._sleep_unless_stopping,
            self._parked,
            self._abort.is_set,
            self._breaker,
            self._stop_event,
            lambda: self._work,
        )
        self._batches = BatchRunner(
            subscriber,
            self._decoder,
            self._guard,
            self._throttle,
            self._limiter,
            self._rng,
            lambda: self._stopping,
            self._sleep_unless_stopping,
            self._abort.is_set,
            self._breaker,
            self._stop_event,
            batch_span,
            metrics.timed_batch if metrics is not None else None,
            self._batch_returned,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe (live once ``task_status.started()`` fires), then consume until aborted.

        Stopping goes in the order the SPI promises: handlers still running past the graceful
        timeout are cancelled, what is unsettled is released, then the subscription is closed,
        and only then does its background work end."""
        try:
            with anyio.CancelScope() as guard:
                async with anyio.create_task_group() as work:
                    async with anyio.create_task_group() as handlers:
                        self._work = handlers
                        self._start_lanes(handlers)
                        await self._consume.start(work)
                        # Live: from now on only `abort` (after the drain) ends the work.
                        # Otherwise cancelling the scope that hosts the bus -- a cancelled
                        # `bus.run()`, which is how the CLI stops on SIGTERM -- would cancel
                        # in-flight handlers at once instead of draining (DESIGN 3.8).
                        guard.shield = True
                        task_status.started()
                        await self._abort.wait()
                        # Past the graceful timeout: cancel what still runs. Its messages stay
                        # unsettled and are released below: redelivered, never acked.
                        handlers.cancel_scope.cancel()
                    await self._close()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    def _start_lanes(self, handlers: TaskGroup) -> None:
        options = self.subscriber.options
        if options.batch is None:
            self._lanes = KeyLanes(
                handlers, self._handle, lambda: not self._stopping, options.concurrency
            )
            return
        self._batch_lanes = BatchLanes(
            handlers,
            self._handle_batch,
            lambda: not self._stopping,
            lambda state: state.raw.message.key,
            lambda state: state.settled,
            options.batch,
            options.concurrency,
        )
        self._batch_lanes.start()

    async def _close(self) -> None:
        if not self.closed.is_set():
            await self._release_unsettled()
            await self._consume.aclose()
            if self._throttle is not None:
                try:
                    await self._throttle.close()
                except Exception:
                    log.exception("%s: closing the rate limiter failed", self.subscriber.describe())
            self.closed.set()

    async def drain(self) -> None:
        """Stop fetching and wait until every started handler finished and every started
        manual-ack delivery is settled. Unstarted deliveries are left for `abort` to release."""
        self._stopping = True
        self._stop_event.set()
        await self._consume.stop()
        await self._in_flight.wait_quiet()

    def abort(self) -> None:
        """End `run`: cancel remaining work, release what is unsettled, close."""
        self._stopping = True
        self._stop_event.set()
        self._abort.set()

    def pause(self) -> None:
        """Stop fetching without leaving the group; in-flight work goes on."""
        self._consume.pause()

    def resume(self) -> None:
        self._consume.resume()

    @property
    def connected(self) -> bool:
        """Whether the subscription can receive now (health checks): not while the broker
        refuses its retries or dead letters."""
        return self._consume.connected and self.refused is None

    def _on_refused(self, why: str | None) -> None:
        self.refused = why
        if why is None:
            self._consume.resume("refused")
        else:
            self._consume.pause("refused")

    async def _release_unsettled(self) -> None:
        # Newest first: a transport that puts a released message back at the front of its
        # partition (memory) then restores the original order, so same-key messages reach the
        # next consumer in publish order (DESIGN 3.5), as its own close does.
        for state in reversed(self._in_flight.items()):
            try:
                await state.release()
            except Exception:
                log.exception("%s: release failed", self.subscriber.describe())

    # -- accepting --------------------------------------------------------------------------

    def _accept(self, raw: RawDelivery) -> None:
        state = DeliveryState(self._settling, raw)
        requeued = self._republisher.requeued_attempt(raw.message.id)
        if requeued:
            state.attempt = max(state.attempt, requeued)
        self._in_flight.add(raw, state)
        if self._stopping:
            return  # fetched during stop: released, not started
        if self._lanes is not None:
            self._lanes.submit(raw.message.key, state)
        elif self._batch_lanes is not None:
            self._batch_lanes.submit(raw.message.key, state)

    # -- handling ---------------------------------------------------------------------------

    async def _handle(self, state: DeliveryState) -> None:
        if self._stopping or state.settled:
            return  # stopping: released later; settled: lost to the transport meanwhile
        self._in_flight.enter_busy(state)
        keep_busy = False
        handling = HANDLING.set((self.subscriber, state))
        try:
            keep_busy = await self._attempts.run(state)
        except BaseException as exc:
            if self._attempts.is_ours(state, exc):
                raise
            # Nothing may escape the worker (one that ends cancels every other handler of the
            # subscription), and the message must not stay in flight: a failure of the
            # pipeline itself is a failed attempt (DESIGN 8).
            log.exception(
                "%s: internal error handling %s", self.subscriber.describe(), state.raw.message.id
            )
            with contextlib.suppress(Exception):
                await state.fail("internal", exc)
        finally:
            HANDLING.reset(handling)
            state.finish()
            if not keep_busy or state.settled:
                self._in_flight.leave_busy(state)

    def _batch_returned(self, states: list[DeliveryState]) -> None:
        if self._batch_lanes is not None:
            self._batch_lanes.returned(states)

    async def _handle_batch(self, states: list[DeliveryState]) -> None:
        if self._stopping:
            return  # released later
        for state in states:
            self._in_flight.enter_busy(state)
        try:
            await self._batches.run(states)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()) and (
                self._abort.is_set() or any(state.lost for state in states)
            ):
                raise
            log.exception("%s: internal error handling a batch", self.subscriber.describe())
            for state in states:
                with contextlib.suppress(Exception):
                    await state.fail("internal", exc)
        finally:
            with anyio.CancelScope(shield=True):
                for state in states:
                    if not state.settled:
                        # Cancelled with part of the batch lost: the rest runs again in a
                        # later batch and claims its keys anew.
                        with contextlib.suppress(Exception):
                            await state.release_claim()
                    state.finish()  # `Ownership.lost` may wait for it
                    self._in_flight.leave_busy(state)

    def _parked(self) -> AbstractContextManager[object]:
        return self._lanes.parked() if self._lanes is not None else contextlib.nullcontext()

    async def _sleep_unless_stopping(self, seconds: float) -> bool:
        """Sleep without a worker's turn (others start meanwhile); True if the subscription
        started stopping meanwhile."""
        with self._parked():
            with anyio.move_on_after(seconds):
                await self._stop_event.wait()
        return self._stopping
