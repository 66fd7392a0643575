"""Rebalances: letting revoked partitions go without a key being handled in two places at once.

aiokafka calls `RebalanceListener` inside its rebalance, before the group moves on. For the
revoked partitions, in this order:

1. Nothing more of them is handed out (``Ownership.draining``), and what the read-ahead buffer
   holds of them is dropped: the new owner reads it again from the commit.
2. Drain: wait, up to ``revoke_drain_timeout``, for the deliveries already handed out to be
   settled, so that their acks still count.
3. The ones still unsettled are taken out (their settles become no-ops) and reported to the
   core, ``await owner.lost(...)``, which returns once no handler runs any of them. Only then
   may the new owner get them: this is what keeps per-key order across a rebalance when a
   handler outlives the drain.
4. The trackers are frozen and what is safe is committed (never past an unfinished offset);
   the new owner starts from that commit.

Settling never needs the fetch loop, so waiting here, inside aiokafka's rebalance, cannot
deadlock with it. The drain, the report and the commit stay inside the group's rebalance
timeout, which the subscription derives from the drain timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]

from eventbus.loggers import get_logger
from eventbus.transports.base import DeliveryOwner
from eventbus_kafka.committer import Committer
from eventbus_kafka.handed_out import HandedOut
from eventbus_kafka.offsets import PartitionOffsets
from eventbus_kafka.ownership import Ownership
from eventbus_kafka.pauses import Pauses
from eventbus_kafka.readahead import ReadAhead

__all__ = ["REVOKE_COMMIT_TIMEOUT", "Revocation"]

log = get_logger(__name__)

TP = Any  # aiokafka TopicPartition

REVOKE_COMMIT_TIMEOUT = 5.0


class Revocation(ConsumerRebalanceListener):  # type: ignore[misc]
    """The consumer's rebalance listener (aiokafka calls it from its coordinator task)."""

    def __init__(
        self,
        consumer: Any,
        owner: DeliveryOwner,
        *,
        owned: Ownership,
        pauses: Pauses,
        buffer: ReadAhead,
        handed_out: HandedOut,
        committer: Committer,
        drain_timeout: float,
        closing: Callable[[], bool],
        describe: str,
    ) -> None:
        self._consumer = consumer
        self._owner = owner
        self._owned = owned
        self._pauses = pauses
        self._buffer = buffer
        self._handed_out = handed_out
        self._committer = committer
        self._drain_timeout = drain_timeout
        self._closing = closing
        self._describe = describe

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.revoke(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._owned.assign(set(assigned))
        self._buffer.drop(self._owned.current)

    async def revoke(self, revoked: set[TP]) -> None:
        owned = self._owned
        draining = {t for tp in revoked if (t := owned.trackers.get(tp)) is not None}
        if draining:
            owned.draining |= draining
            self._buffer.drop(owned.current)
            try:
                await self._drain(draining)
                lost = self._handed_out.detach(draining)
                if lost:
                    log.warning(
                        "%s: %d deliveries of revoked partitions still unsettled after %.1fs; "
                        "the new owner gets them again",
                        self._describe,
                        len(lost),
                        self._drain_timeout,
                    )
                    await self._report_lost(lost)
            finally:
                owned.draining -= draining
        frozen = owned.revoke(revoked)
        self._pauses.forget(revoked)
        self._buffer.drop(owned.current)
        if frozen:
            await self._committer.commit(self._consumer, frozen, REVOKE_COMMIT_TIMEOUT)

    async def _drain(self, trackers: set[PartitionOffsets]) -> None:
        handed_out = self._handed_out
        with anyio.move_on_after(self._drain_timeout):
            while handed_out.pending(trackers) and not self._closing():
                handed_out.left.clear()
                await handed_out.left.wait()

    async def _report_lost(self, lost: list[Any]) -> None:
        try:
            await self._owner.lost(lost)
        except Exception:  # the core promises not to raise; a bug there must not stall us
            log.exception("%s: the core failed to take back lost deliveries", self._describe)
