"""SqliteDedupStore: the conformance suite, several processes on one file, cleanup, config."""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from eventbus.dedup.base import ClaimResult
from eventbus.dedup.sqlite import SqliteDedupStore
from eventbus.testing.dedup_conformance import DedupStoreConformance


class TestSqliteDedupStore(DedupStoreConformance):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SqliteDedupStore]:
        store = SqliteDedupStore(tmp_path / "dedup.sqlite3")
        yield store
        await store.close()

    @pytest.fixture
    async def other_store(self, tmp_path: Path) -> AsyncIterator[SqliteDedupStore]:
        # Its own connection to the same file: races cross connections, as between processes.
        store = SqliteDedupStore(tmp_path / "dedup.sqlite3")
        yield store
        await store.close()


def _claim_in_process(
    path: str, keys: list[str], worker: int, results: multiprocessing.queues.Queue[list[str]]
) -> None:
    async def main() -> list[str]:
        store = SqliteDedupStore(path)
        won = []
        for key in keys:
            if await store.claim("t/g", key, owner=f"p{worker}", lease=60) is ClaimResult.CLAIMED:
                won.append(key)
                await store.complete("t/g", key, owner=f"p{worker}", ttl=60)
        await store.close()
        return won

    results.put(anyio.run(main))


def test_processes_sharing_a_file_claim_each_key_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    keys = [f"k{i}" for i in range(200)]
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.queues.Queue[list[str]] = ctx.Queue()
    procs = [
        # Each process walks the keys in a different order so that they collide everywhere.
        ctx.Process(target=_claim_in_process, args=(path, keys[i:] + keys[:i], i, results))
        for i in (0, 50, 100, 150)
    ]
    for p in procs:
        p.start()
    won: Counter[str] = Counter()
    for _ in procs:
        won.update(results.get(timeout=120))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert won == Counter({k: 1 for k in keys})


async def test_file_is_wal_and_created_lazily(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "lazy.sqlite3"
    path.parent.mkdir()
    store = SqliteDedupStore(path)
    assert not path.exists()  # constructing does no I/O
    await store.open()
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await store.close()
    # Closed stores open again on next use (a bus may be entered more than once).
    assert await store.claim("t/g", "m1", owner="a", lease=60) is ClaimResult.CLAIMED
    await store.close()


async def test_expired_rows_are_cleaned_up_while_claiming(tmp_path: Path) -> None:
    path = tmp_path / "cleanup.sqlite3"
    now = [1000.0]
    store = SqliteDedupStore(path, cleanup_every=10, cleanup_batch=100, clock=lambda: now[0])
    for i in range(50):
        await store.complete("t/g", f"old{i}", owner="a", ttl=5)
    now[0] += 10  # every record above has expired
    for i in range(10):  # the tenth claim sweeps
        await store.claim("t/g", f"new{i}", owner="a", lease=60)
    await store.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT key FROM eventbus_dedup ORDER BY key").fetchall()
    assert sorted(k for (k,) in rows) == sorted(f"new{i}" for i in range(10))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": ""}, "path"),
        ({"path": "x.db", "table": "bad-name"}, "table"),
        ({"path": "x.db", "table": "main.t"}, "schema"),
        ({"path": "x.db", "busy_timeout": 0}, "busy_timeout"),
        ({"path": "x.db", "synchronous": "OFF"}, "synchronous"),
        ({"path": "x.db", "cleanup_every": 0}, "cleanup_every"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqliteDedupStore(**kwargs)  # type: ignore[arg-type]
