"""A reusable pytest suite every `DedupStore` (and `InboxStore`) must pass.

Subclass in a test module and override the ``store`` fixture (and, for stores shared between
processes, ``other_store``: a second instance on the same database, so races cross
connections)::

    from eventbus.testing.dedup_conformance import DedupStoreConformance

    class TestMyStore(DedupStoreConformance):
        @pytest.fixture
        async def store(self):
            store = MyStore(...)
            yield store
            await store.close()

Every test uses a fresh random scope, so a shared database needs no cleaning between tests.
Expiry tests use real leases of ``short`` seconds and wait for them; they assert on states and
counts, never on how long something took. Needs pytest-asyncio.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import pytest

from eventbus.dedup.base import ClaimResult, DedupStore, InboxStore

__all__ = ["DedupStoreConformance", "InboxStoreConformance"]

CLAIMED, DONE, BUSY = ClaimResult.CLAIMED, ClaimResult.DONE, ClaimResult.BUSY
LONG = 60.0  # a lease or TTL that never runs out during a test


class DedupStoreConformance:
    """The `DedupStore` contract: atomic claims, leases, release on failure, TTL, scoping."""

    pytestmark: ClassVar[Any] = pytest.mark.asyncio

    short: ClassVar[float] = 0.2
    """Seconds of the leases and TTLs that tests wait out."""
    patience: ClassVar[float] = 20.0
    """How long a test waits for an expiry that is due before it fails."""
    reentrant_claims: ClassVar[bool] = True
    """Whether an owner that claims its own live claim again gets CLAIMED (lease renewed), as
    `DedupStore.claim` specifies; this makes a claim retried after a lost reply safe."""
    validates_durations: ClassVar[bool] = True
    """Whether the store rejects leases and TTLs that are not finite and above 0."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[DedupStore]:
        raise NotImplementedError("override the `store` fixture to build the store under test")
        yield  # pragma: no cover

    @pytest.fixture
    async def other_store(self, store: DedupStore) -> AsyncIterator[DedupStore]:
        """A second instance on the same backing storage; by default the same instance."""
        yield store

    @pytest.fixture
    def scope(self) -> str:
        return f"conformance-{uuid.uuid4().hex[:12]}/group"

    # -- helpers -------------------------------------------------------------------------------

    async def wait_for(self, store: DedupStore, scope: str, key: str, want: ClaimResult) -> None:
        """Claim until the store answers ``want`` (then, if CLAIMED, the claim is held)."""
        with anyio.fail_after(self.patience):
            while True:
                result = await store.claim(scope, key, owner=_owner(), lease=LONG)
                if result is want:
                    return
                await anyio.sleep(self.short / 4)

    # -- claims --------------------------------------------------------------------------------

    async def test_first_claim_wins_others_busy(self, store: DedupStore, scope: str) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is BUSY
        assert await store.claim(scope, "m1", owner="c", lease=LONG) is BUSY

    async def test_same_owner_claims_again(self, store: DedupStore, scope: str) -> None:
        if not self.reentrant_claims:
            pytest.skip(f"{type(store).__name__} answers BUSY to its own owner")
        assert await store.claim(scope, "m1", owner="a", lease=self.short) is CLAIMED
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        await anyio.sleep(self.short * 2)
        # The renewed lease holds; others are still kept out.
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is BUSY
        await store.complete(scope, "m1", owner="a", ttl=LONG)
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is DONE

    async def test_completed_key_is_done(self, store: DedupStore, scope: str) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        await store.complete(scope, "m1", owner="a", ttl=LONG)
        for owner in ("a", "b", "c"):
            assert await store.claim(scope, "m1", owner=owner, lease=LONG) is DONE

    async def test_keys_are_independent(self, store: DedupStore, scope: str) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        await store.complete(scope, "m1", owner="a", ttl=LONG)
        assert await store.claim(scope, "m2", owner="a", lease=LONG) is CLAIMED
        assert await store.claim(scope, "m3", owner="b", lease=LONG) is CLAIMED

    async def test_scopes_are_independent(self, store: DedupStore, scope: str) -> None:
        other = scope.replace("/group", "/other-group")
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        await store.complete(scope, "m1", owner="a", ttl=LONG)
        assert await store.claim(other, "m1", owner="b", lease=LONG) is CLAIMED

    async def test_separators_do_not_collide(self, store: DedupStore, scope: str) -> None:
        # (scope "x:a", key "b") and (scope "x", key "a:b") are different records.
        await store.complete(f"{scope}:a", "b", owner="a", ttl=LONG)
        assert await store.claim(scope, "a:b", owner="b", lease=LONG) is CLAIMED
        await store.complete(f"{scope}/a", "b", owner="a", ttl=LONG)
        assert await store.claim(scope, "a/b", owner="b", lease=LONG) is CLAIMED

    async def test_unusual_keys(self, store: DedupStore, scope: str) -> None:
        keys = ["", " ", "ü-ключ-鍵", "a%3Ab", "x" * 1000, "'; DROP TABLE x; --", "*", "\\"]
        for key in keys:
            assert await store.claim(scope, key, owner="a", lease=LONG) is CLAIMED
            await store.complete(scope, key, owner="a", ttl=LONG)
        for key in keys:
            assert await store.claim(scope, key, owner="b", lease=LONG) is DONE

    # -- races ---------------------------------------------------------------------------------

    async def test_claim_race_one_winner(
        self, store: DedupStore, other_store: DedupStore, scope: str
    ) -> None:
        results: list[ClaimResult] = []

        async def contend(s: DedupStore, i: int) -> None:
            results.append(await s.claim(scope, "hot", owner=f"w{i}", lease=LONG))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(contend, store if i % 2 else other_store, i)
        assert Counter(results) == {CLAIMED: 1, BUSY: 49}

    async def test_claim_race_many_keys(
        self, store: DedupStore, other_store: DedupStore, scope: str
    ) -> None:
        winners: Counter[str] = Counter()
        keys = [f"k{i}" for i in range(20)] * 8
        random.Random(7).shuffle(keys)

        async def contend(s: DedupStore, i: int, key: str) -> None:
            if await s.claim(scope, key, owner=f"w{i}", lease=LONG) is CLAIMED:
                winners[key] += 1

        async with anyio.create_task_group() as tg:
            for i, key in enumerate(keys):
                tg.start_soon(contend, store if i % 2 else other_store, i, key)
        assert winners == Counter({f"k{i}": 1 for i in range(20)})

    async def test_race_on_done_key_is_all_done(
        self, store: DedupStore, other_store: DedupStore, scope: str
    ) -> None:
        await store.complete(scope, "m1", owner="first", ttl=LONG)
        results: list[ClaimResult] = []

        async def contend(s: DedupStore, i: int) -> None:
            results.append(await s.claim(scope, "m1", owner=f"w{i}", lease=LONG))

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(contend, store if i % 2 else other_store, i)
        assert Counter(results) == {DONE: 30}

    async def test_workers_process_each_message_once(
        self, store: DedupStore, other_store: DedupStore, scope: str
    ) -> None:
        """Four workers, every message delivered three times, one in five attempts failing:
        the dispatcher's protocol (claim; DONE skip; BUSY wait; fail -> release) runs each
        message's effect exactly once."""
        effects: Counter[str] = Counter()
        attempts: Counter[str] = Counter()
        skipped = 0
        rng = random.Random(42)
        messages = [f"m{i}" for i in range(40)]
        deliveries = messages * 3
        rng.shuffle(deliveries)
        send, receive = anyio.create_memory_object_stream[str](len(deliveries))
        for message in deliveries:
            send.send_nowait(message)
        send.close()

        async def worker(s: DedupStore, name: str) -> None:
            nonlocal skipped
            async with receive.clone() as inbox:
                async for key in inbox:
                    while True:  # attempts of one delivery
                        owner = f"{name}-{uuid.uuid4().hex[:8]}"
                        result = await s.claim(scope, key, owner=owner, lease=LONG)
                        if result is DONE:
                            skipped += 1
                            break
                        if result is BUSY:
                            await anyio.sleep(0.005)
                            continue
                        attempts[key] += 1
                        await anyio.sleep(rng.random() / 200)
                        if rng.random() < 0.2:  # the handler failed: let a retry claim it
                            await s.release(scope, key, owner=owner)
                            continue
                        effects[key] += 1
                        await s.complete(scope, key, owner=owner, ttl=LONG)
                        break

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(worker, store if i % 2 else other_store, f"w{i}")
        receive.close()
        assert effects == Counter({m: 1 for m in messages})
        assert skipped == 2 * len(messages)
        assert sum(attempts.values()) >= len(messages)

    # -- release -------------------------------------------------------------------------------

    async def test_release_lets_another_claim(self, store: DedupStore, scope: str) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        await store.release(scope, "m1", owner="a")
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is CLAIMED
        await store.complete(scope, "m1", owner="b", ttl=LONG)
        assert await store.claim(scope, "m1", owner="c", lease=LONG) is DONE

    async def test_release_by_another_owner_is_ignored(self, store: DedupStore, scope: str) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        await store.release(scope, "m1", owner="b")
        assert await store.claim(scope, "m1", owner="c", lease=LONG) is BUSY

    async def test_release_after_complete_is_ignored(self, store: DedupStore, scope: str) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        await store.complete(scope, "m1", owner="a", ttl=LONG)
        await store.release(scope, "m1", owner="a")
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is DONE

    async def test_release_of_unknown_key_is_ignored(self, store: DedupStore, scope: str) -> None:
        await store.release(scope, "never-claimed", owner="a")
        assert await store.claim(scope, "never-claimed", owner="a", lease=LONG) is CLAIMED

    # -- leases --------------------------------------------------------------------------------

    async def test_lease_expires(
        self, store: DedupStore, other_store: DedupStore, scope: str
    ) -> None:
        """A crashed worker's claim runs out; the message can then be processed again."""
        assert await store.claim(scope, "m1", owner="crashed", lease=self.short) is CLAIMED
        assert await other_store.claim(scope, "m1", owner="b", lease=LONG) is BUSY
        await anyio.sleep(self.short)
        await self.wait_for(other_store, scope, "m1", CLAIMED)
        # The new claim holds; the crashed owner can no longer release it.
        await store.release(scope, "m1", owner="crashed")
        assert await store.claim(scope, "m1", owner="c", lease=LONG) is BUSY

    async def test_complete_after_lease_ran_out(self, store: DedupStore, scope: str) -> None:
        """complete() records the key even when the owner's lease has run out."""
        assert await store.claim(scope, "m1", owner="slow", lease=self.short) is CLAIMED
        await anyio.sleep(self.short * 2)
        await store.complete(scope, "m1", owner="slow", ttl=LONG)
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is DONE

    async def test_complete_without_claim(self, store: DedupStore, scope: str) -> None:
        await store.complete(scope, "m1", owner="a", ttl=LONG)
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is DONE

    # -- retention -----------------------------------------------------------------------------

    async def test_ttl_expires(self, store: DedupStore, scope: str) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        await store.complete(scope, "m1", owner="a", ttl=self.short)
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is DONE
        await anyio.sleep(self.short)
        await self.wait_for(store, scope, "m1", CLAIMED)

    async def test_purge_removes_only_expired(self, store: DedupStore, scope: str) -> None:
        purge = getattr(store, "purge_expired", None)
        if purge is None:
            pytest.skip(f"{type(store).__name__} has no purge_expired()")
        for i in range(30):
            await store.complete(scope, f"old{i}", owner="a", ttl=self.short)
        await store.complete(scope, "live-done", owner="a", ttl=LONG)
        assert await store.claim(scope, "live-claim", owner="a", lease=LONG) is CLAIMED
        await anyio.sleep(self.short * 2)
        removed = await purge()
        # Natively expiring stores (Redis) report 0; table stores removed at least ours.
        assert removed == 0 or removed >= 30
        assert await store.claim(scope, "live-done", owner="b", lease=LONG) is DONE
        assert await store.claim(scope, "live-claim", owner="b", lease=LONG) is BUSY
        assert await store.claim(scope, "old0", owner="b", lease=LONG) is CLAIMED

    # -- input and lifecycle -------------------------------------------------------------------

    @pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
    async def test_rejects_bad_durations(self, store: DedupStore, scope: str, bad: float) -> None:
        if not self.validates_durations:
            pytest.skip(f"{type(store).__name__} does not validate durations")
        with pytest.raises(ValueError, match="lease"):
            await store.claim(scope, "m1", owner="a", lease=bad)
        with pytest.raises(ValueError, match="ttl"):
            await store.complete(scope, "m1", owner="a", ttl=bad)

    async def test_close_twice(self, store: DedupStore) -> None:
        await store.close()
        await store.close()


class InboxStoreConformance(DedupStoreConformance):
    """The `InboxStore` contract, on top of `DedupStoreConformance`.

    Override ``write_effect`` (one write through the inbox resource) and ``count_effects``
    (how many of those writes for ``key`` are committed, read outside any inbox transaction).
    """

    async def write_effect(self, resource: Any, scope: str, key: str) -> None:
        raise NotImplementedError

    async def count_effects(self, store: InboxStore, scope: str, key: str) -> int:
        raise NotImplementedError

    async def test_inbox_commits_effect_and_done_together(
        self, store: InboxStore, scope: str
    ) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        async with store.inbox(scope, "m1", owner="a", ttl=LONG) as resource:
            assert isinstance(resource, store.inbox_type)
            await self.write_effect(resource, scope, "m1")
            assert await self.count_effects(store, scope, "m1") == 0  # not committed yet
            assert await store.claim(scope, "m1", owner="b", lease=LONG) is BUSY
        assert await self.count_effects(store, scope, "m1") == 1
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is DONE

    async def test_inbox_failure_rolls_back_and_releases(
        self, store: InboxStore, scope: str
    ) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        with pytest.raises(RuntimeError, match="handler failed"):
            async with store.inbox(scope, "m1", owner="a", ttl=LONG) as resource:
                await self.write_effect(resource, scope, "m1")
                raise RuntimeError("handler failed")
        assert await self.count_effects(store, scope, "m1") == 0
        # Released: the retry claims it at once (no lease to wait out) and succeeds.
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is CLAIMED
        async with store.inbox(scope, "m1", owner="b", ttl=LONG) as resource:
            await self.write_effect(resource, scope, "m1")
        assert await self.count_effects(store, scope, "m1") == 1
        assert await store.claim(scope, "m1", owner="c", lease=LONG) is DONE

    async def test_inbox_cancelled_rolls_back_and_releases(
        self, store: InboxStore, scope: str
    ) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        with anyio.CancelScope() as cancel:
            async with store.inbox(scope, "m1", owner="a", ttl=LONG) as resource:
                await self.write_effect(resource, scope, "m1")
                cancel.cancel()
                await anyio.sleep(LONG)
        assert cancel.cancelled_caught
        assert await self.count_effects(store, scope, "m1") == 0
        assert await store.claim(scope, "m1", owner="b", lease=LONG) is CLAIMED

    async def test_inbox_after_takeover_commits_nothing(
        self, store: InboxStore, other_store: InboxStore, scope: str
    ) -> None:
        """A slow worker whose lease ran out while another took the message over must not
        commit its effects: exactly one of the two does."""
        assert await store.claim(scope, "m1", owner="slow", lease=self.short) is CLAIMED
        with pytest.raises(Exception) as caught:
            async with store.inbox(scope, "m1", owner="slow", ttl=LONG) as resource:
                await self.write_effect(resource, scope, "m1")
                await anyio.sleep(self.short)
                await self.wait_for(other_store, scope, "m1", CLAIMED)
                # wait_for's claim holds now; that worker does the work and commits first.
                await other_store.complete(scope, "m1", owner="?", ttl=LONG)
        assert not isinstance(caught.value, AssertionError)
        assert await self.count_effects(store, scope, "m1") == 0
        assert await store.claim(scope, "m1", owner="c", lease=LONG) is DONE

    async def test_inbox_redelivery_after_commit_is_skipped(
        self, store: InboxStore, other_store: InboxStore, scope: str
    ) -> None:
        """Committed, then the worker died before the broker ack: the redelivery is DONE."""
        assert await store.claim(scope, "m1", owner="a", lease=LONG) is CLAIMED
        async with store.inbox(scope, "m1", owner="a", ttl=LONG) as resource:
            await self.write_effect(resource, scope, "m1")
        # (no ack, no complete: the process is gone)
        assert await other_store.claim(scope, "m1", owner="b", lease=LONG) is DONE
        assert await self.count_effects(store, scope, "m1") == 1


def _owner() -> str:
    return uuid.uuid4().hex
