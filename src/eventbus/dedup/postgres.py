"""A dedup store in PostgreSQL, with an inbox: handler writes and the "done" record commit together.

Exactly-once effects with the inbox (DESIGN 3.6)::

    claim   (own statement, committed)     row = claimed by <owner> until now() + lease
    inbox   BEGIN on a pool connection     the handler gets this connection
            ... the handler's writes ...
            mark done (same transaction)   only if no one else holds a live claim or record
            COMMIT                         effects and "done" become visible together
    ack     the broker forgets the message

A crash before COMMIT rolls the handler's writes back; the lease runs out and a redelivery
claims the key and processes it cleanly. A crash after COMMIT but before the ack leads to a
redelivery that finds the key done and is skipped. If the lease runs out while a slow handler
is still working and another worker claims the key, the slow handler's transaction cannot mark
it done: it rolls back with `LeaseLostError`, so only one worker's effects ever commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from eventbus.dedup._validate import check_identifier, check_positive_int, check_seconds
from eventbus.dedup.base import ClaimResult
from eventbus.errors import BrokerUnavailableError, LeaseLostError
from eventbus.loggers import get_logger
from eventbus.postgres_common import import_asyncpg, is_transient, postgres_address, postgres_target

if TYPE_CHECKING:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

__all__ = ["LeaseLostError", "PostgresDedupStore"]

log = get_logger("eventbus.dedup.postgres")

# Bounds the cleanup that runs after a failed inbox transaction, even when it is cancelled.
_ABORT_TIMEOUT = 10.0
# Pauses before running a statement again after its connection was lost.
_RETRY_DELAYS = (0.05, 0.5, 2.0)


class PostgresDedupStore:
    """Remembers processed keys in a PostgreSQL table; an `InboxStore` for exactly-once effects.

    ``dsn_or_pool`` is a ``postgresql://`` DSN (the store creates an asyncpg pool of up to
    ``max_pool_size`` connections on first use; `close()` closes it) or an ``asyncpg.Pool`` you
    own (never closed by the store). The table (``scope, key, owner, state, expires_at``,
    primary key ``(scope, key)``) and an index on ``expires_at`` are created on first use
    unless ``create_table=False``; `open()` does both eagerly. Expiry uses the database's clock,
    so workers on hosts with skewed clocks agree. Every ``cleanup_every`` claims, up to
    ``cleanup_batch`` expired rows are deleted; `purge_expired()` does it on demand.

    A handler parameter annotated ``asyncpg.Connection`` receives the inbox transaction's
    connection (an asyncpg pool connection proxy, which passes ``isinstance(c,
    asyncpg.Connection)``); it must not be kept after the handler returns.

    Needs ``pip install 'eventbus[postgres]'``. Task-safe.
    """

    inbox_type: type[Any]
    """``asyncpg.Connection``: the annotation that asks for the inbox connection."""

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool,
        *,
        table: str = "eventbus_dedup",
        create_table: bool = True,
        max_pool_size: int = 10,
        cleanup_every: int = 1000,
        cleanup_batch: int = 1000,
    ) -> None:
        self._dsn, self._pool = postgres_target(dsn_or_pool)
        self.inbox_type = import_asyncpg().Connection
        self._table = check_identifier("table", table)
        self._create_table = bool(create_table)
        self._max_pool_size = check_positive_int("max_pool_size", max_pool_size)
        self._cleanup_every = check_positive_int("cleanup_every", cleanup_every)
        self._cleanup_batch = check_positive_int("cleanup_batch", cleanup_batch)
        self._ready = False
        self._lock: anyio.Lock | None = None
        self._claims = 0
        self._sql = _Statements(self._table)

    def __repr__(self) -> str:
        return f"PostgresDedupStore({self._address()!r}, table={self._table!r})"

    async def open(self) -> None:
        """Connect and create the table now rather than on first use."""
        await self._get_pool()

    async def claim(self, scope: str, key: str, *, owner: str, lease: float) -> ClaimResult:
        lease = check_seconds("lease", lease)
        self._claims += 1
        if self._claims % self._cleanup_every == 0:
            # Before the claim, never after: a failed cleanup must not lose a recorded claim.
            await self._cleanup()
        # Rarely, the conflicting row changes between the upsert and the read of its state
        # (released or expired just then): ask again rather than guess.
        for _ in range(3):
            answer = await self._call("fetchval", self._sql.claim, scope, key, owner, lease)
            if answer is not None:
                return _ANSWERS[answer]
        return ClaimResult.BUSY  # the dispatcher waits and claims again

    async def complete(self, scope: str, key: str, *, owner: str, ttl: float) -> None:
        # Unconditional (DedupStore.complete): the effect happened even if the lease ran out.
        ttl = check_seconds("ttl", ttl)
        await self._call("execute", self._sql.complete, scope, key, owner, ttl)

    async def release(self, scope: str, key: str, *, owner: str) -> None:
        await self._call("execute", self._sql.release, scope, key, owner)

    def inbox(
        self, scope: str, key: str, *, owner: str, ttl: float
    ) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """Yield a pool connection inside an open transaction; on normal exit record the key
        as done in that transaction and commit. On an exception (including cancellation) roll
        back, release ``owner``'s claim and re-raise. Raises `LeaseLostError` (after rolling
        back) when another worker took the key over after ``owner``'s lease ran out."""
        return self.inbox_many(scope, [(key, owner)], ttl=ttl)

    @asynccontextmanager
    async def inbox_many(
        self, scope: str, claims: Sequence[tuple[str, str]], *, ttl: float
    ) -> AsyncIterator[asyncpg.Connection]:
        """`inbox` for a batch: one transaction, and every ``(key, owner)`` claim recorded as
        done in it, or none (a lost lease on any key rolls it all back)."""
        ttl = check_seconds("ttl", ttl)
        pool = await self._get_pool()
        release_later = False
        try:
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                try:
                    yield conn
                    for key, owner in claims:
                        recorded = await conn.fetchval(self._sql.inbox_done, scope, key, owner, ttl)
                        if recorded is None:
                            raise LeaseLostError(
                                f"dedup key {key!r} in scope {scope!r} was taken over by another "
                                f"worker after the lease of {owner!r} ran out; this transaction "
                                "was rolled back"
                            )
                except BaseException:
                    release_later = not await self._abort(conn, tx, scope, claims)
                    raise
                # If COMMIT itself fails, whether it happened is unknown: the dispatcher's
                # release() is then right either way (it only drops a claim, never "done").
                await tx.commit()
        finally:
            if release_later:
                # Only now, with this connection back in the pool: taking a second connection
                # while holding one could deadlock a pool full of failing inbox handlers.
                with anyio.move_on_after(_ABORT_TIMEOUT, shield=True):
                    for key, owner in claims:
                        await self._release_quietly(scope, key, owner)

    async def purge_expired(self, *, limit: int | None = None) -> int:
        """Delete up to ``limit`` (default: all) expired rows now; returns how many."""
        if limit is None:
            status = await self._call("execute", self._sql.purge_all)
        else:
            status = await self._call(
                "execute", self._sql.purge, check_positive_int("limit", limit)
            )
        return int(status.rsplit(" ", 1)[-1])  # "DELETE <n>"

    async def close(self) -> None:
        """Close the pool if the store made it from a DSN; a pool you passed stays open."""
        if self._dsn is not None and self._pool is not None:
            pool, self._pool = self._pool, None
            self._ready = False
            self._lock = None  # a reopened store may run in another event loop
            await pool.close()

    # -- internals ---------------------------------------------------------------------------

    async def _call(self, method: str, sql: str, *args: object) -> Any:
        """Run one statement on the pool. Every statement of this store is idempotent (a claim
        repeated by its owner gets the same claim back), so one that met a lost connection --
        e.g. across a database restart -- is simply run again, a few times, before the outage
        is reported as `BrokerUnavailableError`."""
        for delay in (*_RETRY_DELAYS, None):
            try:
                pool = await self._get_pool()
                return await getattr(pool, method)(sql, *args)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if delay is None:
                    raise BrokerUnavailableError(self._address(), repr(exc)) from exc
                log.info("dedup store %s: %r; trying again in %.2fs", self._table, exc, delay)
                await anyio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _address(self) -> str:
        return postgres_address(self._dsn, self._pool)

    async def _get_pool(self) -> Any:
        if self._ready:
            return self._pool
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._pool is None:
                self._pool = await import_asyncpg().create_pool(
                    self._dsn, min_size=1, max_size=self._max_pool_size
                )
            if self._create_table:
                await self._ensure_table(self._pool)
            self._ready = True
        return self._pool

    async def _ensure_table(self, pool: Any) -> None:
        # CREATE ... IF NOT EXISTS alone races between processes (both may try to create the
        # table's row type and one fails): serialize them on an advisory lock.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"eventbus.dedup:{self._table}"
            )
            await conn.execute(self._sql.create_table)
            await conn.execute(self._sql.create_index)

    async def _cleanup(self) -> None:
        try:
            await self._call("execute", self._sql.purge, self._cleanup_batch)
        except Exception as exc:  # cleanup is best effort; the next round tries again
            log.warning("dedup cleanup of %s failed: %r", self._table, exc)

    async def _abort(
        self, conn: Any, tx: Any, scope: str, claims: Sequence[tuple[str, str]]
    ) -> bool:
        """Roll back and release the claims on the same connection; False if they could not
        be released there (e.g. the connection broke)."""
        # Shielded: a cancelled handler (graceful-shutdown timeout) must still roll back and
        # give its claims up, or the messages would wait for the whole lease to be retried.
        with anyio.move_on_after(_ABORT_TIMEOUT, shield=True):
            try:
                await tx.rollback()
                for key, owner in claims:
                    await conn.execute(self._sql.release, scope, key, owner)
                return True
            except Exception as exc:  # a broken connection rolled back on the server anyway
                log.debug("rollback of inbox transaction failed: %r", exc)
        return False

    async def _release_quietly(self, scope: str, key: str, owner: str) -> None:
        try:
            await self.release(scope, key, owner=owner)
        except Exception as exc:  # the lease will run out instead
            log.warning("releasing dedup claim %s/%s failed: %r", scope, key, exc)


_ANSWERS = {"claimed": ClaimResult.CLAIMED, "done": ClaimResult.DONE, "busy": ClaimResult.BUSY}


class _Statements:
    """The SQL, with the (validated) table name filled in once."""

    def __init__(self, table: str) -> None:
        index = table.rsplit(".", 1)[-1] + "_expires_at_idx"
        self.create_table = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " scope text NOT NULL, key text NOT NULL, owner text,"
            " state text NOT NULL CHECK (state IN ('claimed', 'done')),"
            " expires_at timestamptz NOT NULL,"
            " PRIMARY KEY (scope, key))"
        )
        self.create_index = f"CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at)"
        # One statement, so one round trip per message. The upsert takes the row only when it
        # is absent, expired, or this owner's own claim (a retry after a lost reply gets it
        # back, lease renewed); otherwise the row stays locked-but-unchanged and the outer
        # SELECT reports its state (NULL if it changed in between: the caller asks again).
        self.claim = (
            f"WITH won AS ("
            f" INSERT INTO {table} AS d (scope, key, owner, state, expires_at)"
            f" VALUES ($1, $2, $3, 'claimed', now() + make_interval(secs => $4))"
            f" ON CONFLICT (scope, key) DO UPDATE"
            f" SET owner = excluded.owner, state = 'claimed', expires_at = excluded.expires_at"
            f" WHERE d.expires_at <= now() OR (d.state = 'claimed' AND d.owner = excluded.owner)"
            f" RETURNING 1)"
            f" SELECT CASE WHEN EXISTS (SELECT 1 FROM won) THEN 'claimed'"
            f" ELSE (SELECT CASE state WHEN 'done' THEN 'done' ELSE 'busy' END"
            f" FROM {table} WHERE scope = $1 AND key = $2 AND expires_at > now()) END"
        )
        self.complete = (
            f"INSERT INTO {table} AS d (scope, key, owner, state, expires_at)"
            f" VALUES ($1, $2, $3, 'done', now() + make_interval(secs => $4))"
            f" ON CONFLICT (scope, key) DO UPDATE"
            f" SET owner = excluded.owner, state = 'done', expires_at = excluded.expires_at"
        )
        # Inside the handler's transaction, whose now() is when it began: use the real clock.
        # Refuses (no row returned) when someone else holds a live claim or the key is already
        # done: then this transaction's effects must not commit.
        self.inbox_done = (
            f"INSERT INTO {table} AS d (scope, key, owner, state, expires_at)"
            f" VALUES ($1, $2, $3, 'done', clock_timestamp() + make_interval(secs => $4))"
            f" ON CONFLICT (scope, key) DO UPDATE"
            f" SET owner = excluded.owner, state = 'done', expires_at = excluded.expires_at"
            f" WHERE (d.state = 'claimed' AND d.owner = excluded.owner)"
            f" OR d.expires_at <= clock_timestamp()"
            f" RETURNING 1"
        )
        self.release = (
            f"DELETE FROM {table}"
            f" WHERE scope = $1 AND key = $2 AND owner = $3 AND state = 'claimed'"
        )
        # SKIP LOCKED: never wait for rows a claim or an inbox transaction is working on.
        self.purge = (
            f"DELETE FROM {table} WHERE ctid = ANY (ARRAY("
            f" SELECT ctid FROM {table} WHERE expires_at <= now()"
            f" LIMIT $1 FOR UPDATE SKIP LOCKED))"
        )
        self.purge_all = f"DELETE FROM {table} WHERE expires_at <= now()"
