"""The consume loop: keep one transport subscription alive and feed what it yields.

It subscribes, runs the subscription's background work (`Subscription.run`) in its own task
group, waits for in-flight room before each fetch (DESIGN 3.7), and hands every delivery to
``accept``. If the subscription breaks after it went live -- ``run`` or the iterator raises --
every delivery still in flight from it is reported lost (another consumer gets them), it is
closed, and a new one is opened after a backoff: a subscription never stops while its bus runs
(DESIGN 8). A failure before the first subscription is live is the caller's to report (a bad
URL, a broker that cannot be reached at start).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from eventbus.backoff import Backoff
from eventbus.dispatch.inflight import InFlight
from eventbus.dispatch.subscriber import Subscriber
from eventbus.loggers import get_logger
from eventbus.transports.base import DeliveryOwner, RawDelivery, Subscription, Transport

__all__ = ["ConsumeLoop"]

log = get_logger("eventbus.dispatch")


class ConsumeLoop:
    def __init__(
        self,
        subscriber: Subscriber,
        transport: Transport,
        owner: DeliveryOwner,
        in_flight: InFlight[Any],
        accept: Callable[[RawDelivery], None],
        lose_all: Callable[[], Awaitable[None]],
    ) -> None:
        self._sub = subscriber
        self._transport = transport
        self._owner = owner
        self._in_flight = in_flight
        self._accept = accept
        self._lose_all = lose_all
        self._backoff = Backoff(0.2, 10.0)
        self._stopping = False
        self._stopped = anyio.Event()
        self._closed = anyio.Event()
        self.current: Subscription | None = None
        self._paused_by: set[str] = set()
        """Who asked for a pause (the user, the rate limit, ...): fetching resumes when all
        of them resumed, so one policy never undoes another's pause."""

    async def start(self, group: TaskGroup) -> None:
        """Run in ``group``; return once live. A start-up failure is raised as itself: a user
        of ``async with bus`` whose broker is unreachable gets `BrokerUnavailableError`, not
        nested exception groups."""
        try:
            await group.start(self.run)
        except BaseExceptionGroup as error:
            sole = sole_error(error)
            if sole is error:
                raise
            raise sole from sole.__cause__  # its own cause kept: the driver's error

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consume until `aclose`; ``task_status.started()`` once the first subscription is
        live. After `stop` the subscription's background work (commits) keeps running until
        `aclose` closed the subscription."""
        live = False
        while not self._stopping:
            try:
                sub = await self._transport.subscribe(self._sub.spec, self._owner)
                self.current = sub
                if self._closed.is_set():  # closed while re-subscribing: `aclose` saw none
                    self.current = None
                    await sub.close()
                    return
                if self._paused_by:
                    sub.pause()
                async with anyio.create_task_group() as tg:
                    await tg.start(sub.run)
                    if not live:
                        live = True
                        task_status.started()
                    self._backoff.up()
                    await self._fetch(sub)
                    if not self._stopping:
                        raise RuntimeError("the subscription ended without being stopped")
                    # Stopped: the background work (commits) goes on while the runner settles
                    # or releases what is in flight; `aclose` closes the subscription, which
                    # ends its `run`. One that does not end by itself is cancelled then.
                    await self._closed.wait()
                    tg.cancel_scope.cancel()
            except Exception as exc:
                if not live:
                    raise
                if not self._stopping:
                    await self._recover(exc)

    async def _recover(self, exc: Exception) -> None:
        sub = self._sub
        sub.stats.restarts += 1
        wait = self._backoff.next()
        log.error(
            "%s: the subscription broke (%r); its in-flight messages go to the next owner; "
            "subscribing again in %.1fs",
            sub.describe(),
            exc,
            wait,
            exc_info=exc,
        )
        await self._lose_all()
        broken, self.current = self.current, None
        if broken is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                try:
                    await broken.close()
                except Exception:
                    log.debug("closing the broken subscription failed", exc_info=True)
        with anyio.move_on_after(wait):
            await self._stopped.wait()

    async def _fetch(self, sub: Subscription) -> None:
        stats = self._sub.stats
        batches = sub.__aiter__()
        while not self._stopping:
            await self._in_flight.wait_for_room()
            if self._stopping:
                return
            try:
                batch: Sequence[RawDelivery] = await batches.__anext__()
            except StopAsyncIteration:
                return
            stats.received += len(batch)
            for raw in batch:
                self._accept(raw)

    @property
    def connected(self) -> bool:
        """Subscribed and able to receive: not while subscribing again after a break, nor while
        the transport re-establishes a lost connection."""
        current = self.current
        return current is not None and current.connected

    def pause(self, by: str = "user") -> None:
        self._paused_by.add(by)
        if self.current is not None:
            self.current.pause()

    def resume(self, by: str = "user") -> None:
        self._paused_by.discard(by)
        if not self._paused_by and self.current is not None:
            self.current.resume()

    async def stop(self) -> None:
        """Stop fetching; what was handed out can still be settled."""
        self._stopping = True
        self._stopped.set()
        self._in_flight.wake()
        if self.current is not None:
            try:
                await self.current.stop()
            except Exception:
                log.exception("%s: stopping the subscription failed", self._sub.describe())

    async def aclose(self) -> None:
        """Close the subscription (the transport releases what it still holds). Call after
        `run` was cancelled and what was in flight was settled or released."""
        self._stopping = True
        self._stopped.set()
        sub, self.current = self.current, None
        try:
            if sub is not None:
                await sub.close()
        except Exception:
            log.exception("%s: closing the subscription failed", self._sub.describe())
        finally:
            self._closed.set()


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def sole_error(error: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups that hold only it, else ``error``:
    what a start-up failure is raised as, through the task groups it crossed."""
    leaves = _leaves(error)
    return leaves[0] if len(leaves) == 1 else error
