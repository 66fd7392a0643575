"""The dedup guard (DESIGN 3.6): claim a message's key before its handler runs, record it done
once the handler's effect is settled, release it after a failure so a retry can claim it.

A store outage never strands a message in flight and never spends an attempt: claims are asked
again with backoff (the key lane waits; other keys flow). A store that fails for one key while
it answers for others is not an outage: that key's message fails its attempt instead
(`KeyRefusedError`), so it is retried and finally dead-lettered, never stuck.

Completion is tried a few times; when the store stays down the message is acked anyway,
because the handler's effect happened and a release would run it again now.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio

from eventbus.dedup.base import ClaimResult, DedupStore
from eventbus.dispatch.subscriber import Subscriber
from eventbus.loggers import get_logger
from eventbus.message import Message

__all__ = ["Claim", "DedupGuard", "KeyRefusedError"]

log = get_logger("eventbus.dispatch")

Claim = Literal["run", "done", "stopping"]
"""``run``: this attempt holds the claim; ``done``: the key was already handled (ack and skip);
``stopping``: the subscription stopped while waiting."""

_COMPLETE_BACKOFF = (0.1, 0.5, 2.0)
_KEY_FAILURES = 3
"""Failed claims of one key, while the store answers for other keys, that make the failure
permanent for that key (a value the store cannot hold, say) rather than an outage."""


class KeyRefusedError(Exception):
    """The dedup store keeps failing for one key while it works for others: a failure of the
    message, handled like a failed attempt (retried, then dead-lettered), where a store
    outage would wait without spending one."""


class DedupGuard:
    def __init__(
        self,
        subscriber: Subscriber,
        store: DedupStore,
        wait: Callable[[float], Awaitable[bool]],
    ) -> None:
        """``wait(seconds)`` sleeps without holding a concurrency slot and returns True when
        the subscription started stopping meanwhile."""
        self._sub = subscriber
        self.store = store
        self._wait = wait
        self._key_of = subscriber.options.dedup_key
        self._healthy_since = -1.0
        """`time.monotonic` of the last claim the store answered (for any key)."""

    def key_of(self, message: Message) -> str:
        """The message's dedup key (the user's ``dedup_key`` may raise: the caller decides)."""
        if self._key_of is None:
            return message.id
        key = self._key_of(message)
        if not isinstance(key, str):
            raise TypeError(f"dedup_key returned {type(key).__name__}, not str")
        return key

    async def claim(self, key: str) -> tuple[Claim, str | None]:
        """Claim ``key``; returns the outcome and, for ``run``, the owner token. A key another
        worker holds is waited for (its claim completes or its lease expires)."""
        sub = self._sub
        owner = uuid.uuid4().hex
        wait = 0.05
        failures = 0
        failing_since = time.monotonic()
        while True:
            try:
                result = await self.store.claim(
                    sub.scope, key, owner=owner, lease=sub.options.dedup_lease
                )
            except Exception as exc:
                failures += 1
                if failures >= _KEY_FAILURES and self._healthy_since > failing_since:
                    # Other keys were claimed meanwhile: the store works, this key does not.
                    raise KeyRefusedError(f"the dedup store refuses key {key!r}: {exc!r}") from exc
                log.warning("%s: dedup store claim failed: %r; retrying", sub.describe(), exc)
                if await self._wait(wait):
                    return "stopping", None
                wait = min(wait * 2, 5.0)
                continue
            self._healthy_since = time.monotonic()
            if result is ClaimResult.CLAIMED:
                return "run", owner
            if result is ClaimResult.DONE:
                sub.stats.duplicates += 1
                return "done", None
            if await self._wait(wait):
                return "stopping", None
            wait = min(wait * 2, 1.0)

    async def complete(self, key: str, owner: str) -> None:
        sub = self._sub
        for pause in (*_COMPLETE_BACKOFF, None):
            try:
                await self.store.complete(sub.scope, key, owner=owner, ttl=sub.options.dedup_ttl)
                return
            except Exception as exc:
                if pause is None:
                    log.error(
                        "%s: cannot record %s as done in the dedup store (%r); acking anyway",
                        sub.describe(),
                        key,
                        exc,
                    )
                    return
                await anyio.sleep(pause)

    async def release(self, key: str, owner: str) -> None:
        """After a failure: let a retry (here or in another worker) claim the key again."""
        try:
            await self.store.release(self._sub.scope, key, owner=owner)
        except Exception as exc:
            log.warning(
                "%s: dedup release failed (%r); the claim frees itself when its lease ends",
                self._sub.describe(),
                exc,
            )
