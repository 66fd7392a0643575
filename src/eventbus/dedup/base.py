"""The deduplication store protocol (DESIGN 3.6).

The dispatcher uses a store like this for each delivery of a subscription with ``dedup=``::

    match await store.claim(scope, key, owner=owner, lease=lease):
        case ClaimResult.DONE:    ack, skip the handler (counted)
        case ClaimResult.BUSY:    another worker holds a live claim: wait, then claim again
        case ClaimResult.CLAIMED: run the handler; then complete() and ack,
                                  or release() so a retry can claim it again

``scope`` is ``"<topic>/<group>"`` (or ``"<queue>"``): the same message id is processed once per
group. Stores shared between processes (SQLite, Redis, PostgreSQL) make that hold across
workers; `MemoryDedupStore` only within one process.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

__all__ = ["ClaimResult", "DedupStore", "InboxStore"]


class ClaimResult(enum.Enum):
    CLAIMED = "claimed"
    DONE = "done"
    BUSY = "busy"


@runtime_checkable
class DedupStore(Protocol):
    """Where processed message keys are remembered. Every method is atomic and task-safe.

    A claim holds for ``lease`` seconds: if its owner crashes, the key becomes claimable again
    when the lease runs out. A completed key is remembered for ``ttl`` seconds, then forgotten
    (the store cleans up so it does not grow without bound).
    """

    async def claim(self, scope: str, key: str, *, owner: str, lease: float) -> ClaimResult:
        """DONE if the key was completed (and not yet expired); BUSY if another owner holds an
        unexpired claim; otherwise record a claim by ``owner`` and return CLAIMED."""
        ...

    async def complete(self, scope: str, key: str, *, owner: str, ttl: float) -> None:
        """Mark the key done for ``ttl`` seconds (even if ``owner``'s lease has run out: the
        effect did happen)."""
        ...

    async def release(self, scope: str, key: str, *, owner: str) -> None:
        """Drop ``owner``'s claim so the message can be claimed again; no-op if not the owner."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class InboxStore(DedupStore, Protocol):
    """A store whose "done" record can share a transaction with the handler's own writes.

    A handler that declares a parameter annotated with ``inbox_type`` gets the open transaction's
    resource (e.g. an ``asyncpg`` connection). The dispatcher then calls ``inbox`` instead of
    ``complete``: the record is written inside the transaction and commits with the handler's
    writes or not at all, so effects happen exactly once even if the process dies before the
    broker ack (the redelivery finds the key done and is skipped).
    """

    inbox_type: type[Any]

    def inbox(
        self, scope: str, key: str, *, owner: str, ttl: float
    ) -> AbstractAsyncContextManager[Any]:
        """Open a transaction, yield the resource, and on normal exit mark the key done in the
        same transaction and commit; on an exception roll back and release the claim."""
        ...


@runtime_checkable
class BatchInboxStore(InboxStore, Protocol):
    """An `InboxStore` that can also record a batch's keys in one transaction, as a batch
    handler (``batch=``) that takes the inbox resource needs."""

    def inbox_many(
        self, scope: str, claims: Sequence[tuple[str, str]], *, ttl: float
    ) -> AbstractAsyncContextManager[Any]:
        """`inbox` for many ``(key, owner)`` claims: on normal exit all are marked done in the
        transaction and it commits; on an exception (a lost lease on any key included) it
        rolls back and every claim is released."""
        ...
