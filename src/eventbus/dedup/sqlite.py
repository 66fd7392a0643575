"""A dedup store in a SQLite file: shared by every worker process on one host, no server."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import Literal

from eventbus.dedup._validate import check_identifier, check_positive_int, check_seconds
from eventbus.dedup.base import ClaimResult
from eventbus.errors import ConfigurationError
from eventbus.loggers import get_logger
from eventbus.sqlite_common import SqliteConnection

__all__ = ["SqliteDedupStore"]

log = get_logger("eventbus.dedup.sqlite")


class SqliteDedupStore:
    """Remembers processed keys in a SQLite database file (WAL mode).

    Several processes on the same host may share one file: every claim is a ``BEGIN IMMEDIATE``
    transaction, so two workers never both get CLAIMED for a live key. Not for network file
    systems (SQLite's locking does not hold there) nor for workers on several hosts: use
    `RedisDedupStore` or `PostgresDedupStore` for those.

    The file, its table and index are created on first use (so constructing the store at import
    time is fine); `open()` does it eagerly. Expiry uses ``clock`` (wall-clock seconds, the same
    for every process on the host). Expired rows are deleted in batches of ``cleanup_batch``
    every ``cleanup_every`` claims, and by `purge_expired()`.

    ``synchronous="NORMAL"`` (default) survives a crash of any process; an operating-system
    crash or power loss may forget the last few completions (those messages would be processed
    again). ``"FULL"`` syncs every commit to disk, at several times the cost per message.

    Calls run one at a time on a worker thread (the event loop never blocks on the file);
    task-safe; `close()` closes the file, and a later call opens it again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "eventbus_dedup",
        busy_timeout: float = 10.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        cleanup_every: int = 1000,
        cleanup_batch: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = os.fspath(path)
        if not self._path:
            raise ConfigurationError("path must name a database file, e.g. 'var/dedup.sqlite3'")
        self._table = check_identifier("table", table)
        if "." in table:
            raise ConfigurationError(
                f"table must not be schema-qualified for SQLite, got {table!r}"
            )
        self._busy_timeout = check_seconds("busy_timeout", busy_timeout)
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self._synchronous = synchronous
        self._cleanup_every = check_positive_int("cleanup_every", cleanup_every)
        self._cleanup_batch = check_positive_int("cleanup_batch", cleanup_batch)
        self._clock = clock
        self._claims = 0
        self._db = SqliteConnection(self._path, busy_timeout=self._busy_timeout, setup=self._setup)

    def __repr__(self) -> str:
        return f"SqliteDedupStore({self._path!r}, table={self._table!r})"

    async def open(self) -> None:
        """Open the file and create the table now rather than on first use."""
        await self._db.run(self._db.connection)

    async def claim(self, scope: str, key: str, *, owner: str, lease: float) -> ClaimResult:
        lease = check_seconds("lease", lease)
        return await self._db.run(lambda: self._claim(scope, key, owner, lease))

    async def complete(self, scope: str, key: str, *, owner: str, ttl: float) -> None:
        ttl = check_seconds("ttl", ttl)

        def run() -> None:
            self._db.connection().execute(
                f"INSERT INTO {self._table} (scope, key, owner, state, expires_at)"
                " VALUES (?, ?, ?, 'done', ?) ON CONFLICT (scope, key) DO UPDATE SET"
                " owner = excluded.owner, state = 'done', expires_at = excluded.expires_at",
                (scope, key, owner, self._clock() + ttl),
            )

        await self._db.run(run)

    async def release(self, scope: str, key: str, *, owner: str) -> None:
        def run() -> None:
            self._db.connection().execute(
                f"DELETE FROM {self._table}"
                " WHERE scope = ? AND key = ? AND owner = ? AND state = 'claimed'",
                (scope, key, owner),
            )

        await self._db.run(run)

    async def purge_expired(self, *, limit: int | None = None) -> int:
        """Delete up to ``limit`` (default: all) expired rows now; returns how many."""
        if limit is not None:
            check_positive_int("limit", limit)
        return await self._db.run(lambda: self._purge(-1 if limit is None else limit))

    async def close(self) -> None:
        await self._db.close()

    # -- on the worker thread --------------------------------------------------------------

    def _setup(self, conn: sqlite3.Connection) -> None:
        self._use_wal(conn)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} ("
            " scope TEXT NOT NULL, key TEXT NOT NULL, owner TEXT,"
            " state TEXT NOT NULL, expires_at REAL NOT NULL,"
            " PRIMARY KEY (scope, key))"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {self._table}_expires_at ON {self._table} (expires_at)"
        )

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # WAL lets readers and the writer proceed together. The mode is stored in the file, so
        # only its first user switches it; that switch fails with "locked" (without calling the
        # busy handler) while another process opens the file at the same moment: retry.
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            return
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _claim(self, scope: str, key: str, owner: str, lease: float) -> ClaimResult:
        conn = self._db.connection()
        self._claims += 1
        if self._claims % self._cleanup_every == 0:
            # Before the claim, never after: a failed cleanup must not lose a recorded claim.
            try:
                self._purge(self._cleanup_batch)
            except sqlite3.Error as exc:  # best effort; the next round tries again
                log.warning("dedup cleanup of %s failed: %r", self._path, exc)
        # IMMEDIATE takes the write lock up front: the read and the write below are one atomic
        # step for every process sharing the file (waiting up to busy_timeout for the lock).
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = self._clock()  # after the lock wait, which may be long
            row = conn.execute(
                f"SELECT state, owner, expires_at FROM {self._table} WHERE scope = ? AND key = ?",
                (scope, key),
            ).fetchone()
            # A live record blocks the claim, unless it is this owner's own claim (a retried
            # claim after an ambiguous failure gets it again, with its lease renewed).
            if row is not None and row[2] > now and (row[0] == "done" or row[1] != owner):
                result = ClaimResult.DONE if row[0] == "done" else ClaimResult.BUSY
            else:
                conn.execute(
                    f"INSERT INTO {self._table} (scope, key, owner, state, expires_at)"
                    " VALUES (?, ?, ?, 'claimed', ?) ON CONFLICT (scope, key) DO UPDATE SET"
                    " owner = excluded.owner, state = 'claimed',"
                    " expires_at = excluded.expires_at",
                    (scope, key, owner, now + lease),
                )
                result = ClaimResult.CLAIMED
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _purge(self, limit: int) -> int:
        cursor = self._db.connection().execute(
            f"DELETE FROM {self._table} WHERE rowid IN"
            f" (SELECT rowid FROM {self._table} WHERE expires_at <= ? LIMIT ?)",
            (self._clock(), limit),
        )
        return cursor.rowcount
