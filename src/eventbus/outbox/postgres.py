"""The transactional outbox in PostgreSQL (asyncpg).

Writing: `PostgresOutbox.publish` inserts one row on the application's own connection, inside
its open transaction, so the row commits or rolls back with the application's writes.

Relaying, with several relays at once (processes, hosts)::

    for each bucket with unsent rows (a random first one, then round the ring):
        pg_try_advisory_lock(table, bucket)      session lock on the relay's own connection;
                                                 taken by another relay: skip the bucket
        SELECT unsent rows of the bucket ORDER BY id LIMIT batch
        publish them, in order, awaiting the broker's confirmation
        UPDATE ... SET sent_at = now()           (or DELETE with retention=0)
        ... next batch, until the bucket is empty
        pg_advisory_unlock(table, bucket)

A key is always in the same bucket, and a bucket is worked by one relay at a time, so a key's
rows go out in order and, under normal operation, once. ``FOR UPDATE SKIP LOCKED`` alone would
let a second relay take a key's next rows while the first still publishes the earlier ones.
A session lock dies with its connection: a SIGKILLed relay's buckets are free again as soon as
the server notices the closed socket; its published-but-unmarked rows are published again by
the next relay (same message ids: at-least-once, dedup drops them), before the later rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from eventbus.codecs.base import AsyncCodec, Codec
from eventbus.dedup._validate import check_identifier, check_positive_int
from eventbus.errors import BrokerUnavailableError, ConfigurationError
from eventbus.loggers import get_logger
from eventbus.outbox.base import (
    DEFAULT_RETENTION,
    INSERT_COLUMNS,
    READ_COLUMNS,
    NewRow,
    NotInTransactionError,
    OutboxBacklog,
    OutboxTable,
    PublishRows,
    Writer,
    check_retention,
    read_row,
    settle_batch,
)
from eventbus.postgres_common import import_asyncpg, is_transient, postgres_address, postgres_target
from eventbus.transports.base import Kind

if TYPE_CHECKING:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

__all__ = ["PostgresOutbox"]

log = get_logger("eventbus.outbox")

_BATCHES_PER_BUCKET = 10
"""Batches a relay publishes from one bucket before it goes on to the next in its round: a
busy bucket does not starve the others (the round comes back to it at once)."""


class PostgresOutbox(OutboxTable["asyncpg.Connection"]):
    """An outbox table in PostgreSQL: `publish`/`send` inside the application's transaction,
    and what the relay needs (`eventbus.outbox.Outbox`).

    ``dsn_or_pool``: a ``postgresql://`` DSN (the outbox opens a small pool of up to
    ``max_pool_size`` connections for creating the table and housekeeping, and one connection
    for relaying; `close()` closes them) or an ``asyncpg.Pool`` you own (never closed here; a
    relay holds one of its connections while it runs). The table and its indexes are created
    on first use, on the outbox's own connection (not in the application's transaction, so a
    rollback never takes the table away).

    ``retention``: seconds sent rows are kept before the relay deletes them (in batches);
    ``0`` deletes each row as soon as it is sent. Needs ``pip install 'eventbus[postgres]'``.
    """

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool,
        *,
        table: str = "eventbus_outbox",
        codec: Codec | AsyncCodec | None = None,
        retention: float = DEFAULT_RETENTION,
        max_pool_size: int = 4,
    ) -> None:
        self._dsn, self._pool = postgres_target(dsn_or_pool)
        self.table = check_identifier("table", table)
        self.retention = check_retention(retention)
        self._max_pool_size = check_positive_int("max_pool_size", max_pool_size)
        self._writer = Writer(codec)
        self._sql = _Statements(self.table)
        self._ready = False
        self._lock: anyio.Lock | None = None
        self._relay_conn: Any = None
        self._relay_from_pool = False

    def __repr__(self) -> str:
        return f"PostgresOutbox({self.address()!r}, table={self.table!r})"

    def address(self) -> str:
        return postgres_address(self._dsn, self._pool)

    async def open(self) -> None:
        """Connect and create the table now rather than on first use."""
        await self._get_pool()

    # -- writing, in the application's transaction -------------------------------------------

    def _check_connection(self, conn: Any, kind: Kind, name: str) -> None:
        if not callable(getattr(conn, "is_in_transaction", None)):
            raise ConfigurationError(
                f"conn must be an asyncpg connection, got {type(conn).__name__}"
            )
        if not conn.is_in_transaction():
            raise NotInTransactionError(
                f"outbox {kind} to {name!r}: the connection has no open transaction; call it "
                "inside `async with conn.transaction():` so the message commits (or rolls "
                "back) with your writes"
            )

    async def _insert(self, conn: Any, row: NewRow) -> None:
        if not self._ready and await conn.fetchval(self._sql.exists, self.table) is None:
            # First use ever: create it, on the outbox's own connection (a rollback must not
            # take it away). When it exists, no DDL runs: the application's role may not be
            # allowed to create anything, and CREATE INDEX would lock the table.
            await self._get_pool()
        await conn.execute(self._sql.insert, *row.values(row.created_at))

    # -- relaying ------------------------------------------------------------------------------

    async def relay_round(
        self,
        publish: PublishRows,
        *,
        batch_size: int,
        stopping: Callable[[], bool],
        marked: Callable[[int], None],
    ) -> int:
        conn = await self._relay_connection()
        done = 0
        try:
            # Only the buckets with unsent rows: an idle relay asks one query per round.
            waiting = [r[0] for r in await conn.fetch(self._sql.waiting_buckets)]
            first = random.randrange(len(waiting) or 1)  # relays starting together spread out
            for bucket in waiting[first:] + waiting[:first]:
                if stopping():
                    break
                if not await conn.fetchval(self._sql.try_lock, self._sql.lock_name, bucket):
                    continue  # another relay works this bucket now
                try:
                    done += await self._drain_bucket(
                        conn, bucket, publish, batch_size, stopping, marked
                    )
                finally:
                    await conn.fetchval(self._sql.unlock, self._sql.lock_name, bucket)
        except BaseException:
            # A broken or cancelled connection may hold locks in an unknown state: drop it (its
            # session locks go with it) rather than hand it to the next round.
            with anyio.CancelScope(shield=True):
                await self._drop_relay_connection()
            raise
        return done

    async def _drain_bucket(
        self,
        conn: Any,
        bucket: int,
        publish: PublishRows,
        batch_size: int,
        stopping: Callable[[], bool],
        marked: Callable[[int], None],
    ) -> int:
        mark = self._sql.delete_sent if self.retention == 0 else self._sql.mark_sent

        async def mark_sent(ids: list[int]) -> None:
            await conn.execute(mark, ids)

        async def mark_failed(failed: dict[int, str]) -> None:
            await conn.executemany(self._sql.mark_failed, list(failed.items()))

        done = 0
        for _ in range(_BATCHES_PER_BUCKET):  # then the other buckets get their turn
            if stopping():
                break
            records = await conn.fetch(self._sql.unsent, bucket, batch_size)
            if not records:
                break
            rows = [read_row(r, r["created_at"]) for r in records]
            await settle_batch(rows, publish, mark_sent, mark_failed, marked)
            done += len(rows)
            if len(rows) < batch_size:
                break
        return done

    async def backlog(self) -> OutboxBacklog:
        pool = await self._get_pool()
        record = await pool.fetchrow(self._sql.backlog)
        return OutboxBacklog(
            unsent=int(record[0]), oldest_age=max(0.0, float(record[1])), failed=int(record[2])
        )

    async def purge_sent(self, *, limit: int) -> int:
        pool = await self._get_pool()
        status = await pool.execute(self._sql.purge, self.retention, limit)
        return int(status.rsplit(" ", 1)[-1])  # "DELETE <n>"

    async def close(self) -> None:
        """Close the relay connection, and the pool if the outbox made it from a DSN."""
        await self._drop_relay_connection()
        if self._dsn is not None and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        self._ready = False
        self._lock = None  # a reopened outbox may run in another event loop

    # -- connections ---------------------------------------------------------------------------

    def _connect_error(self, exc: Exception) -> Exception:
        """What to raise for a failed connect: fatal misconfiguration as `ConfigurationError`,
        an unreachable server as `BrokerUnavailableError`, both naming the address only."""
        asyncpg = import_asyncpg()
        if isinstance(
            exc,
            asyncpg.InvalidPasswordError
            | asyncpg.InvalidAuthorizationSpecificationError
            | asyncpg.InvalidCatalogNameError,
        ):
            return ConfigurationError(f"outbox database {self.address()}: {exc}")
        if is_transient(exc):
            return BrokerUnavailableError(self.address(), f"{type(exc).__name__}: {exc}")
        return exc

    async def _get_pool(self) -> Any:
        if self._ready:
            return self._pool
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            try:
                if self._pool is None:
                    self._pool = await import_asyncpg().create_pool(
                        self._dsn, min_size=0, max_size=self._max_pool_size
                    )
                if not self._ready:
                    await self._ensure_table(self._pool)
            except Exception as exc:
                mapped = self._connect_error(exc)
                if mapped is exc:
                    raise
                raise mapped from exc
            self._ready = True
        return self._pool

    async def _ensure_table(self, pool: Any) -> None:
        # CREATE ... IF NOT EXISTS alone races between processes: serialize on an advisory lock.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._sql.lock_name)
            for statement in self._sql.create:
                await conn.execute(statement)

    async def _relay_connection(self) -> Any:
        if self._relay_conn is not None and not self._relay_conn.is_closed():
            return self._relay_conn
        self._relay_conn = None
        pool = await self._get_pool()
        try:
            if self._dsn is not None:
                # A connection of its own, not the pool's: its session locks must die with it.
                self._relay_conn = await import_asyncpg().connect(self._dsn)
                self._relay_from_pool = False
            else:
                self._relay_conn = await pool.acquire()
                self._relay_from_pool = True
        except Exception as exc:
            mapped = self._connect_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return self._relay_conn

    async def _drop_relay_connection(self) -> None:
        conn, self._relay_conn = self._relay_conn, None
        if conn is None:
            return
        if self._relay_from_pool and self._pool is not None:
            conn.terminate()  # the pool replaces it; a terminated session holds no lock
            try:
                await self._pool.release(conn)
            except Exception as exc:
                log.debug("releasing the relay connection: %r", exc)
        else:
            conn.terminate()


class _Statements:
    """The SQL, with the (validated) table name filled in once."""

    def __init__(self, table: str) -> None:
        base = table.rsplit(".", 1)[-1]
        # Unquoted names fold to lower case: Outbox and outbox are one table, and one lock.
        self.lock_name = f"eventbus.outbox:{table.lower()}"
        self.exists = "SELECT to_regclass($1)"
        self.create = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " id bigserial PRIMARY KEY,"
            " kind text NOT NULL CHECK (kind IN ('topic', 'queue')),"
            " destination text NOT NULL, key text, bucket smallint NOT NULL,"
            # headers: JSON text, not jsonb: an application connection with a jsonb codec
            # would encode the JSON a second time.
            " message_id text NOT NULL, body bytea NOT NULL, headers text NOT NULL,"
            " content_type text, type text, correlation_id text,"
            " created_at timestamptz NOT NULL, sent_at timestamptz,"
            # Why the row can never be published (too large, unroutable, unreadable); it is
            # then set aside, never retried unless someone clears this.
            " failed text)",
            # The relay's reads: a bucket's unsent rows in id order; the index stays as small
            # as the backlog.
            f"CREATE INDEX IF NOT EXISTS {base}_unsent_idx ON {table} (bucket, id)"
            " WHERE sent_at IS NULL AND failed IS NULL",
            f"CREATE INDEX IF NOT EXISTS {base}_sent_idx ON {table} (sent_at)"
            " WHERE sent_at IS NOT NULL",
        )
        self.insert = (
            f"INSERT INTO {table} ({INSERT_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )
        # Two-key advisory locks, (hashtext(lock_name), bucket): PostgreSQL keeps them apart
        # from the one-key lock that serializes the table's creation.
        self.try_lock = "SELECT pg_try_advisory_lock(hashtext($1), $2)"
        self.unlock = "SELECT pg_advisory_unlock(hashtext($1), $2)"
        # A loose index scan over the unsent index: at most BUCKETS + 1 probes, however long
        # the backlog (a plain SELECT DISTINCT would read every unsent row).
        self.waiting_buckets = (
            f"WITH RECURSIVE b AS ("
            f" (SELECT bucket FROM {table} WHERE sent_at IS NULL AND failed IS NULL"
            f" ORDER BY bucket LIMIT 1)"
            f" UNION ALL SELECT (SELECT t.bucket FROM {table} t"
            f" WHERE t.sent_at IS NULL AND t.failed IS NULL AND t.bucket > b.bucket"
            f" ORDER BY t.bucket LIMIT 1)"
            f" FROM b WHERE b.bucket IS NOT NULL)"
            f" SELECT bucket FROM b WHERE bucket IS NOT NULL"
        )
        self.unsent = (
            f"SELECT {READ_COLUMNS} FROM {table}"
            " WHERE bucket = $1 AND sent_at IS NULL AND failed IS NULL ORDER BY id LIMIT $2"
        )
        self.mark_failed = f"UPDATE {table} SET failed = $2 WHERE id = $1"
        self.mark_sent = f"UPDATE {table} SET sent_at = now() WHERE id = ANY($1::bigint[])"
        self.delete_sent = f"DELETE FROM {table} WHERE id = ANY($1::bigint[])"
        self.backlog = (
            "SELECT count(*) FILTER (WHERE failed IS NULL),"
            " coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE failed IS NULL)),"
            " 0)::float8, count(*) FILTER (WHERE failed IS NOT NULL)"
            f" FROM {table} WHERE sent_at IS NULL"
        )
        self.purge = (
            f"DELETE FROM {table} WHERE id = ANY (ARRAY("
            f" SELECT id FROM {table} WHERE sent_at IS NOT NULL"
            f" AND sent_at <= now() - make_interval(secs => $1) ORDER BY sent_at LIMIT $2))"
        )
