"""Committing offsets: one commit at a time per consumer, failures logged and retried later.

What is committed per partition is ``(offset, metadata)`` from `PartitionOffsets.to_commit`:
never past an unfinished record, with the finished ones above it in the metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import anyio
from aiokafka.errors import CommitFailedError  # type: ignore[import-untyped]

from eventbus.loggers import get_logger
from eventbus_kafka.offsets import PartitionOffsets

__all__ = ["Commit", "Committer", "pending_commits"]

log = get_logger(__name__)

TP = Any  # aiokafka TopicPartition
Commit = tuple[int, str]
"""What is committed for a partition: the offset and its metadata (finished offsets above)."""


def pending_commits(
    trackers: Mapping[TP, PartitionOffsets],
) -> dict[TP, tuple[PartitionOffsets, Commit]]:
    """The partitions whose committable state changed since their last commit."""
    pending: dict[TP, tuple[PartitionOffsets, Commit]] = {}
    for tp, tracker in trackers.items():
        state = tracker.to_commit()
        if not tracker.revoked and state != tracker.committed:
            pending[tp] = (tracker, state)
    return pending


class Committer:
    def __init__(self, describe: str) -> None:
        self._describe = describe
        self._lock = asyncio.Lock()

    async def commit(
        self,
        consumer: Any,
        offsets: Mapping[TP, tuple[PartitionOffsets, Commit]],
        within: float | None,
    ) -> bool:
        """Commit; False if it did not happen. ``within=None`` (periodic commits) waits out a
        broker outage, as aiokafka retries retriable errors itself; cutting such a commit
        short only makes aiokafka log an unretrieved error."""
        if not offsets:
            return True
        try:
            with anyio.fail_after(within):
                async with self._lock:
                    await consumer.commit({tp: state for tp, (_, state) in offsets.items()})
        except CommitFailedError as exc:
            # The group rebalanced under us: the revoke hook committed what was safe, and the
            # new owner redelivers the rest.
            log.info("%s: commit skipped after a rebalance: %s", self._describe, exc)
            return False
        except Exception as exc:
            log.warning("%s: commit failed, will retry: %r", self._describe, exc)
            return False
        for tracker, state in offsets.values():
            if tracker.committed is None or state[0] >= tracker.committed[0]:
                tracker.committed = state
        return True
