"""The inbox under real crashes: a worker process is killed (SIGKILL) around its commit.

- killed before COMMIT: its writes vanish with the connection; once the lease runs out the
  redelivery claims the message and processes it cleanly (one effect);
- killed after COMMIT but before the broker ack: the redelivery finds the key done and is
  skipped (still one effect).
"""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from eventbus.dedup.base import ClaimResult
from eventbus.dedup.postgres import PostgresDedupStore

pytestmark = [pytest.mark.postgres, pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")]

LEASE = 1.0
EFFECTS = "eventbus_test_effects"  # created by the effects_db fixture (conftest.py)

WORKER = f"""
import os, signal, sys
import anyio
from eventbus.dedup.base import ClaimResult
from eventbus.dedup.postgres import PostgresDedupStore

dsn, scope, mode = sys.argv[1:4]

async def main() -> None:
    store = PostgresDedupStore(dsn)
    result = await store.claim(scope, "m1", owner="doomed", lease={LEASE})
    if result is not ClaimResult.CLAIMED:
        sys.exit(3)
    async with store.inbox(scope, "m1", owner="doomed", ttl=3600) as conn:
        await conn.execute("INSERT INTO {EFFECTS} (scope, key) VALUES ($1, 'm1')", scope)
        if mode == "before-commit":
            os.kill(os.getpid(), signal.SIGKILL)
    # Committed; the broker ack would come next, but the process dies first.
    os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""


async def run_doomed_worker(dsn: str, scope: str, mode: str) -> None:
    done = await anyio.run_process([sys.executable, "-c", WORKER, dsn, scope, mode], check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


async def count_effects(db: Any, scope: str) -> int:
    count: int = await db.fetchval(f"SELECT count(*) FROM {EFFECTS} WHERE scope = $1", scope)
    return count


async def redelivery(store: PostgresDedupStore, scope: str) -> None:
    """What the dispatcher does with a redelivered message: claim, waiting while it is BUSY
    (never told DONE when nothing committed); process it through the inbox when CLAIMED."""
    owner = uuid.uuid4().hex
    with anyio.fail_after(30):
        while True:
            result = await store.claim(scope, "m1", owner=owner, lease=60)
            if result is not ClaimResult.BUSY:
                break
            await anyio.sleep(0.1)
    if result is ClaimResult.CLAIMED:
        async with store.inbox(scope, "m1", owner=owner, ttl=3600) as tx:
            await tx.execute(f"INSERT INTO {EFFECTS} (scope, key) VALUES ($1, 'm1')", scope)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresDedupStore]:
    store = PostgresDedupStore(postgres_url)
    yield store
    await store.close()


@pytest.fixture
def scope() -> str:
    return f"crash-{uuid.uuid4().hex[:12]}/group"


async def test_killed_before_commit_is_reprocessed_cleanly(
    postgres_url: str, effects_db: Any, store: PostgresDedupStore, scope: str
) -> None:
    await run_doomed_worker(postgres_url, scope, "before-commit")
    assert await count_effects(effects_db, scope) == 0
    assert await store.claim(scope, "m1", owner="peek", lease=60) is not ClaimResult.DONE
    await store.release(scope, "m1", owner="peek")  # in case the lease had run out already
    await redelivery(store, scope)  # waits out the dead worker's lease, then processes
    assert await count_effects(effects_db, scope) == 1
    await redelivery(store, scope)  # and once more: now DONE, skipped
    assert await count_effects(effects_db, scope) == 1


async def test_killed_after_commit_before_ack_is_skipped(
    postgres_url: str, effects_db: Any, store: PostgresDedupStore, scope: str
) -> None:
    await run_doomed_worker(postgres_url, scope, "after-commit")
    assert await count_effects(effects_db, scope) == 1
    assert await store.claim(scope, "m1", owner="peek", lease=60) is ClaimResult.DONE
    await redelivery(store, scope)
    assert await count_effects(effects_db, scope) == 1
