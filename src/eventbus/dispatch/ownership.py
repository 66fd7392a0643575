"""Ownership (DESIGN 8): what happens when the transport takes handed-out deliveries back.

A Kafka partition revoked, an AMQP channel lost: the deliveries are another consumer's now.
`Ownership.lost` -- the transport's `DeliveryOwner` -- makes sure this process stops working on
them before the transport lets them go, so that no key is handled in two places at once:
deliveries still queued in a key lane never start, handlers running them are cancelled (one
in a thread cannot be, and is waited for), a settle already under way is cancelled with its
attempt or waited for, and settling any of them afterwards does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import anyio

from eventbus.dispatch.inflight import InFlight
from eventbus.dispatch.settle import DeliveryState
from eventbus.dispatch.subscriber import Subscriber
from eventbus.loggers import get_logger
from eventbus.transports.base import RawDelivery

__all__ = ["Ownership"]

log = get_logger("eventbus.dispatch")


class Running(Protocol):
    """Where deliveries are worked on: key lanes, or batch lanes."""

    def is_running(self, item: DeliveryState) -> bool: ...
    def cancel(self, item: DeliveryState) -> None: ...


class Ownership:
    def __init__(
        self,
        subscriber: Subscriber,
        in_flight: InFlight[DeliveryState],
        lanes: Callable[[], Running | None],
    ) -> None:
        self._sub = subscriber
        self._in_flight = in_flight
        self._lanes = lanes

    async def lost(self, deliveries: Sequence[RawDelivery]) -> None:
        """The transport took these back: unstarted ones never start, running ones are
        cancelled (a thread is waited for), a settle already under way is cancelled with its
        attempt or waited for, and only then does this return (DESIGN 8)."""
        states = [s for raw in deliveries if (s := self._in_flight.get(raw)) is not None]
        if not states:
            return
        unsettled = {s for s in states if not s.settled}
        lanes = self._lanes()
        running = [s for s in states if lanes is not None and lanes.is_running(s)]
        self._sub.stats.lost += len(unsettled)
        log.warning(
            "%s: %d in-flight deliveries are no longer ours (%d handlers cancelled); their "
            "next owner handles them",
            self._sub.describe(),
            len(states),
            len(running),
        )
        with anyio.CancelScope(shield=True):
            for state in unsettled:
                state.drop()
            for state in running:
                # Before the cancel: the work cancelled below then takes the cancellation for
                # the bus's own, also when a settle of its delivery was already under way (a
                # batch would otherwise fail its other deliveries as an internal error).
                state.lost = True
            for state in running:
                state.expect_finish()
                assert lanes is not None
                lanes.cancel(state)
            for state in running:
                await state.wait_finished()
            for state in states:
                if state in unsettled:
                    await state.release_claim()
                    state.leave()
                else:
                    # Settled by user code outside any attempt (a manual nack publishing its
                    # retry): a publish under way cannot be taken back, so let it end first;
                    # one that keeps failing gives up now (`lost` stops its retries).
                    state.lost = True
                    await state.wait_left()

    async def _lose_all(self) -> None:
        await self.lost([state.raw for state in self._in_flight.items()])

    async def lose_all(self) -> None:
        """The whole subscription broke: everything in flight goes to the next owner."""
        await self.lost([state.raw for state in self._in_flight.items()])
