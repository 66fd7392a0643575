"""The transactional outbox in a SQLite file (the standard library's ``sqlite3``).

Writing: `SqliteOutbox.publish` inserts one row on the application's own ``sqlite3``
connection, inside its transaction, so the row commits or rolls back with its writes.

Relaying: SQLite has no session locks that die with a process, so relays share the file
through a lease row (``<table>_relay``): the relay holding an unexpired lease publishes, in
``id`` order, and renews the lease before every batch; the others wait. An idle relay only
reads (is anything unsent?) and lets its lease run out. A SIGKILLed relay's lease runs out
after ``lease`` seconds and another relay takes over from the first unsent row (rows
published but not marked go out again: at-least-once, same message ids). A relay that finds
its lease taken over publishes nothing more; it only ever marks rows it published. One relay
at a time is plenty here: every writer of the file is on the same host anyway.
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from eventbus.codecs.base import AsyncCodec, Codec
from eventbus.dedup._validate import check_identifier, check_seconds
from eventbus.errors import ConfigurationError
from eventbus.outbox.base import (
    DEFAULT_RETENTION,
    INSERT_COLUMNS,
    READ_COLUMNS,
    NewRow,
    NotInTransactionError,
    OutboxBacklog,
    OutboxRow,
    OutboxTable,
    PublishRows,
    Writer,
    check_retention,
    read_row,
    settle_batch,
)
from eventbus.sqlite_common import SqliteConnection
from eventbus.transports.base import Kind

__all__ = ["SqliteOutbox"]


class SqliteOutbox(OutboxTable[sqlite3.Connection]):
    """An outbox table in a SQLite database file: `publish`/`send` on the application's
    ``sqlite3.Connection`` inside its transaction (opened by Python's implicit ``BEGIN`` or
    your own), on the calling thread, and what the relay needs (`eventbus.outbox.Outbox`).

    ``path`` is the database file the application writes to. The table is created on first
    use (by the relay on its own connection, or by the first `publish` inside the
    application's transaction). ``lease``: seconds a relay holds the table before another may
    take over (the fail-over delay after a relay is killed). ``retention`` as for
    `PostgresOutbox`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "eventbus_outbox",
        codec: Codec | AsyncCodec | None = None,
        retention: float = DEFAULT_RETENTION,
        lease: float = 10.0,
        busy_timeout: float = 10.0,
    ) -> None:
        self._path = os.fspath(path)
        if not self._path:
            raise ConfigurationError("path must name a database file, e.g. 'var/app.sqlite3'")
        self.table = check_identifier("table", table)
        if "." in table:
            raise ConfigurationError(
                f"table must not be schema-qualified for SQLite, got {table!r}"
            )
        self.retention = check_retention(retention)
        self._lease = check_seconds("lease", lease)
        self._busy_timeout = check_seconds("busy_timeout", busy_timeout)
        self._writer = Writer(codec)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._db = SqliteConnection(self._path, busy_timeout=self._busy_timeout, setup=self._setup)
        self._sql_any_unsent = (
            f"SELECT 1 FROM {self.table} WHERE sent_at IS NULL AND failed IS NULL LIMIT 1"
        )

    def __repr__(self) -> str:
        return f"SqliteOutbox({self._path!r}, table={self.table!r})"

    def address(self) -> str:
        return self._path

    async def open(self) -> None:
        """Open the file and create the table now rather than on first use."""
        await self._db.run(self._db.connection)

    # -- writing, in the application's transaction -------------------------------------------

    def _check_connection(self, conn: Any, kind: Kind, name: str) -> None:
        if not isinstance(conn, sqlite3.Connection):
            raise ConfigurationError(
                f"conn must be a sqlite3.Connection, got {type(conn).__name__}"
            )
        if not conn.in_transaction and _autocommits(conn):
            raise NotInTransactionError(
                f"outbox {kind} to {name!r}: the connection is in autocommit mode with no open "
                "transaction; run BEGIN first so the message commits (or rolls back) with "
                "your writes"
            )

    async def _insert(self, conn: Any, row: NewRow) -> None:
        # On the calling thread: the application's connection is its own.
        values = row.values(row.created_at.timestamp())
        try:
            conn.execute(_insert_sql(self.table), values)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            # Created inside the application's transaction (never on a second connection: it
            # would wait for the write lock this transaction may hold), so it rolls back too.
            for statement in _create_sql(self.table):
                conn.execute(statement)
            conn.execute(_insert_sql(self.table), values)

    # -- relaying ------------------------------------------------------------------------------

    async def relay_round(
        self,
        publish: PublishRows,
        *,
        batch_size: int,
        stopping: Callable[[], bool],
        marked: Callable[[int], None],
    ) -> int:
        async def mark_sent(ids: list[int]) -> None:
            await self._db.run(functools.partial(self._mark, ids))

        async def mark_failed(failed: dict[int, str]) -> None:
            await self._db.run(functools.partial(self._mark_failed, failed))

        done = 0
        while not stopping():
            # Renewed before every batch: a relay that lost the lease publishes nothing more.
            rows = await self._db.run(lambda: self._lease_and_read(batch_size))
            if not rows:
                break
            await settle_batch(rows, publish, mark_sent, mark_failed, marked)
            done += len(rows)
            if len(rows) < batch_size:
                break
        return done

    async def backlog(self) -> OutboxBacklog:
        def read() -> OutboxBacklog:
            count, oldest, failed = (
                self._db.connection()
                .execute(
                    "SELECT count(*) FILTER (WHERE failed IS NULL),"
                    " min(created_at) FILTER (WHERE failed IS NULL),"
                    f" count(*) FILTER (WHERE failed IS NOT NULL) FROM {self.table}"
                    " WHERE sent_at IS NULL"
                )
                .fetchone()
            )
            age = max(0.0, time.time() - oldest) if oldest is not None else 0.0
            return OutboxBacklog(unsent=int(count), oldest_age=age, failed=int(failed))

        return await self._db.run(read)

    async def purge_sent(self, *, limit: int) -> int:
        def purge() -> int:
            cursor = self._db.connection().execute(
                f"DELETE FROM {self.table} WHERE id IN (SELECT id FROM {self.table}"
                " WHERE sent_at IS NOT NULL AND sent_at <= ? ORDER BY sent_at LIMIT ?)",
                (time.time() - self.retention, limit),
            )
            return cursor.rowcount

        return await self._db.run(purge)

    async def close(self) -> None:
        await self._db.close(self._hand_over)

    # -- on the worker thread --------------------------------------------------------------

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # a failure closes the connection, rolling it back
        for statement in _create_sql(self.table):
            conn.execute(statement)
        conn.execute("COMMIT")

    def _hand_over(self, conn: sqlite3.Connection) -> None:
        # On close: another relay may take the table at once rather than after the lease.
        conn.execute(f"DELETE FROM {self.table}_relay WHERE id = 1 AND owner = ?", (self._owner,))

    def _lease_and_read(self, batch_size: int) -> list[OutboxRow]:
        conn = self._db.connection()
        if conn.execute(self._sql_any_unsent).fetchone() is None:
            return []  # idle: no write (and no lease) needed to find that out
        # IMMEDIATE: reading and taking the lease is one step for every process on the file.
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            holder = conn.execute(
                f"SELECT owner, expires_at FROM {self.table}_relay WHERE id = 1"
            ).fetchone()
            if holder is not None and holder[0] != self._owner and holder[1] > now:
                conn.execute("COMMIT")
                return []  # another relay holds the table
            conn.execute(
                f"INSERT INTO {self.table}_relay (id, owner, expires_at) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,"
                " expires_at = excluded.expires_at",
                (self._owner, now + self._lease),
            )
            records = conn.execute(
                f"SELECT {READ_COLUMNS} FROM {self.table} WHERE sent_at IS NULL AND failed IS NULL"
                " ORDER BY id LIMIT ?",
                (batch_size,),
            ).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        # created_at, the last column, is stored as seconds since the epoch.
        return [read_row(r, datetime.fromtimestamp(r[-1], UTC)) for r in records]

    def _mark_failed(self, failed: dict[int, str]) -> None:
        self._db.connection().executemany(
            f"UPDATE {self.table} SET failed = ? WHERE id = ?",
            [(why, row_id) for row_id, why in failed.items()],
        )

    def _mark(self, ids: list[int]) -> None:
        conn = self._db.connection()
        marks = ",".join("?" * len(ids))
        if self.retention == 0:
            conn.execute(f"DELETE FROM {self.table} WHERE id IN ({marks})", ids)
        else:
            conn.execute(
                f"UPDATE {self.table} SET sent_at = ? WHERE id IN ({marks})", [time.time(), *ids]
            )


def _autocommits(conn: sqlite3.Connection) -> bool:
    """Whether a statement outside BEGIN commits on its own (no implicit transaction)."""
    autocommit = getattr(conn, "autocommit", None)  # Python 3.12+
    if autocommit is True:
        return True
    if autocommit is False:
        return False  # a transaction is always open
    return conn.isolation_level is None


def _insert_sql(table: str) -> str:
    return f"INSERT INTO {table} ({INSERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"


def _create_sql(table: str) -> tuple[str, ...]:
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"  # never reuses an id: order stays id order
        " kind TEXT NOT NULL, destination TEXT NOT NULL, key TEXT, bucket INTEGER NOT NULL,"
        " message_id TEXT NOT NULL, body BLOB NOT NULL, headers TEXT NOT NULL,"
        " content_type TEXT, type TEXT, correlation_id TEXT,"
        " created_at REAL NOT NULL, sent_at REAL,"
        " failed TEXT)",  # why the row can never be published; then it is set aside
        f"CREATE INDEX IF NOT EXISTS {table}_unsent ON {table} (id)"
        " WHERE sent_at IS NULL AND failed IS NULL",
        f"CREATE INDEX IF NOT EXISTS {table}_sent ON {table} (sent_at) WHERE sent_at IS NOT NULL",
        f"CREATE TABLE IF NOT EXISTS {table}_relay ("
        " id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT NOT NULL, expires_at REAL NOT NULL)",
    )
