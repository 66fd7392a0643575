"""Adopting newly assigned partitions: where each starts, and what the previous owner finished.

After a rebalance the fetch loop resolves the position of every partition it was given, reads
the group's commits (their metadata lists what the previous owner finished above the committed
offset, see `offsets`), and only then tracks the partition and hands out its records. A
partition the group never committed is committed at its start right away ("pinned"), so a later
rebalance cannot re-resolve its start past a message published in between.
"""

from __future__ import annotations

from typing import Any

import anyio
from aiokafka.errors import IllegalStateError  # type: ignore[import-untyped]

from eventbus.transports.base import SubscriptionSpec
from eventbus_kafka.admin import TopicAdmin
from eventbus_kafka.committer import Committer
from eventbus_kafka.ownership import Ownership
from eventbus_kafka.url import KafkaSettings

__all__ = ["Adopter"]

TP = Any  # aiokafka TopicPartition

_COMMIT_TIMEOUT = 10.0


class Adopter:
    def __init__(
        self,
        settings: KafkaSettings,
        spec: SubscriptionSpec,
        *,
        group: str | None,
        admin: TopicAdmin,
        owned: Ownership,
        committer: Committer,
    ) -> None:
        self._settings = settings
        self._spec = spec
        self._group = group
        self._admin = admin
        self._owned = owned
        self._committer = committer

    async def adopt(self, consumer: Any) -> bool:
        """Resolve the positions of the partitions assigned and not tracked yet, track them
        (`Ownership.adopt`) and pin the starts that were never committed. False when a
        rebalance came in between: the next assignment is adopted on the next call."""
        owned = self._owned
        epoch = owned.epoch
        new = owned.unadopted()
        positions: dict[TP, int] = {}
        committed: dict[tuple[str, int], tuple[int, str]] = {}
        with anyio.fail_after(self._settings.join_timeout):
            if new and self._group is not None:
                committed = await self._admin.group_offsets(self._group)
            never_committed = [
                tp for tp in new if committed.get((tp.topic, tp.partition), (-1, ""))[0] < 0
            ]
            fresh = [tp for tp in never_committed if self._starts_at_end(tp)]
            if fresh:
                await consumer.seek_to_end(*fresh)
            for tp in new:
                try:
                    positions[tp] = await consumer.position(tp)
                except IllegalStateError:
                    if epoch != owned.epoch:
                        return False  # revoked while resolving
                    raise
        if epoch != owned.epoch:
            return False
        pins = owned.adopt(positions, committed)
        if pins and self._group is not None:
            await self._committer.commit(consumer, pins, _COMMIT_TIMEOUT)
        if epoch != owned.epoch:
            return False
        owned.adopt_needed = False
        return True

    def _starts_at_end(self, tp: TP) -> bool:
        """``offset_reset=latest``: only for a topic group's main topic, never for queues or
        retry topics (what waits there must not be skipped)."""
        return (
            self._settings.offset_reset == "latest"
            and self._spec.kind == "topic"
            and self._group is not None
            and tp.topic == self._spec.name
        )
