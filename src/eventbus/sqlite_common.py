"""What the SQLite-backed parts (the dedup store, the outbox for relaying) share: a connection
of their own to the database file, used on a worker thread one call at a time, so the event
loop never blocks on the file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

__all__ = ["SqliteConnection"]

_T = TypeVar("_T")


class SqliteConnection:
    """A connection to the file at ``path``, opened on first use with ``setup`` run on it
    (closed again if that fails), closed by `close`, and opened again by a later call.

    ``busy_timeout``: seconds a statement waits for another process's lock on the file.
    """

    def __init__(
        self, path: str, *, busy_timeout: float, setup: Callable[[sqlite3.Connection], None]
    ) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._setup = setup
        self._conn: sqlite3.Connection | None = None
        # One thread at a time uses the connection; created lazily (bound to the running loop).
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` on the worker thread: the only place to call `connection`."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        # Not abandoned on cancellation: a transaction is never left half-done on the thread.
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    def connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        # isolation_level=None: no implicit transactions; the callers open their own with
        # BEGIN IMMEDIATE where they need one.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,  # used by one worker thread at a time (the limiter)
        )
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    async def close(self, last: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Close the connection if it is open, after ``last(conn)`` (closed even if that
        fails)."""

        def run() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    if last is not None:
                        last(conn)
                finally:
                    conn.close()

        await self.run(run)
