"""PostgresDedupStore against a real PostgreSQL: the store and inbox suites, table creation,
cleanup, pool ownership, config."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from eventbus.dedup.base import ClaimResult, InboxStore
from eventbus.dedup.postgres import LeaseLostError, PostgresDedupStore
from eventbus.errors import BrokerUnavailableError
from eventbus.testing.dedup_conformance import InboxStoreConformance

pytestmark = pytest.mark.postgres

EFFECTS = "eventbus_test_effects"  # created by the effects_db fixture (conftest.py)


class TestPostgresDedupStore(InboxStoreConformance):
    @pytest.fixture
    async def store(self, postgres_url: str) -> AsyncIterator[PostgresDedupStore]:
        store = PostgresDedupStore(postgres_url, max_pool_size=4)
        await store.open()
        yield store
        await store.close()

    @pytest.fixture
    async def other_store(self, postgres_url: str) -> AsyncIterator[PostgresDedupStore]:
        store = PostgresDedupStore(postgres_url, max_pool_size=4)
        yield store
        await store.close()

    @pytest.fixture
    def scope(self, effects_db: Any) -> str:
        return f"conformance-{uuid.uuid4().hex[:12]}/group"

    async def write_effect(self, resource: Any, scope: str, key: str) -> None:
        await resource.execute(f"INSERT INTO {EFFECTS} (scope, key) VALUES ($1, $2)", scope, key)

    async def count_effects(self, store: InboxStore, scope: str, key: str) -> int:
        assert isinstance(store, PostgresDedupStore)
        pool = await store._get_pool()
        count: int = await pool.fetchval(
            f"SELECT count(*) FROM {EFFECTS} WHERE scope = $1 AND key = $2", scope, key
        )
        return count

    async def test_takeover_raises_lease_lost(
        self, store: PostgresDedupStore, other_store: PostgresDedupStore, scope: str
    ) -> None:
        assert await store.claim(scope, "m1", owner="slow", lease=self.short) is ClaimResult.CLAIMED
        with pytest.raises(LeaseLostError, match="taken over"):
            async with store.inbox(scope, "m1", owner="slow", ttl=60) as conn:
                await self.write_effect(conn, scope, "m1")
                await anyio.sleep(self.short)
                await self.wait_for(other_store, scope, "m1", ClaimResult.CLAIMED)
        assert await self.count_effects(store, scope, "m1") == 0
        # The other worker still holds its claim: the slow one's rollback did not release it.
        assert await store.claim(scope, "m1", owner="c", lease=60) is ClaimResult.BUSY

    async def test_inbox_after_own_lease_ran_out_still_commits(
        self, store: PostgresDedupStore, scope: str
    ) -> None:
        """Nobody took the key over: a slow handler's work is not thrown away."""
        assert await store.claim(scope, "m1", owner="slow", lease=self.short) is ClaimResult.CLAIMED
        async with store.inbox(scope, "m1", owner="slow", ttl=60) as conn:
            await self.write_effect(conn, scope, "m1")
            await anyio.sleep(self.short * 2)
        assert await self.count_effects(store, scope, "m1") == 1
        assert await store.claim(scope, "m1", owner="b", lease=60) is ClaimResult.DONE

    async def test_handler_sql_error_rolls_back(
        self, store: PostgresDedupStore, scope: str
    ) -> None:
        """A handler that swallows its own SQL error cannot commit a half-done transaction."""
        assert await store.claim(scope, "m1", owner="a", lease=60) is ClaimResult.CLAIMED
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            async with store.inbox(scope, "m1", owner="a", ttl=60) as conn:
                await self.write_effect(conn, scope, "m1")
                with pytest.raises(asyncpg.UndefinedTableError):
                    await conn.execute("SELECT * FROM no_such_table_here")
        assert await self.count_effects(store, scope, "m1") == 0
        assert await store.claim(scope, "m1", owner="b", lease=60) is ClaimResult.CLAIMED

    async def test_failing_handlers_filling_the_pool_do_not_deadlock(
        self, postgres_url: str, scope: str
    ) -> None:
        """Every pool connection held by an inbox whose handler fails at the same moment: the
        rollbacks and releases must not wait for a free connection."""
        store = PostgresDedupStore(postgres_url, max_pool_size=2)
        all_in = anyio.Event()
        inside = 0

        async def failing_handler(key: str) -> None:
            nonlocal inside
            with pytest.raises(RuntimeError):
                async with store.inbox(scope, key, owner="a", ttl=60) as conn:
                    await self.write_effect(conn, scope, key)
                    inside += 1
                    if inside == 2:
                        all_in.set()
                    await all_in.wait()
                    raise RuntimeError("handler failed")

        try:
            for key in ("m1", "m2"):
                assert await store.claim(scope, key, owner="a", lease=60) is ClaimResult.CLAIMED
            with anyio.fail_after(5):  # well below the abort timeout a deadlock would hit
                async with anyio.create_task_group() as tg:
                    tg.start_soon(failing_handler, "m1")
                    tg.start_soon(failing_handler, "m2")
            for key in ("m1", "m2"):
                assert await store.claim(scope, key, owner="b", lease=60) is ClaimResult.CLAIMED
                assert await self.count_effects(store, scope, key) == 0
        finally:
            await store.close()

    async def test_broken_connection_in_handler_still_releases(
        self, store: PostgresDedupStore, scope: str
    ) -> None:
        assert await store.claim(scope, "m1", owner="a", lease=60) is ClaimResult.CLAIMED
        with pytest.raises(RuntimeError, match="lost its connection"):
            async with store.inbox(scope, "m1", owner="a", ttl=60) as conn:
                await self.write_effect(conn, scope, "m1")
                pid = conn.get_server_pid()
                killer = await asyncpg.connect(dsn=store._dsn)
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
                await killer.close()
                with anyio.fail_after(10):
                    while True:  # asyncpg notices the dropped connection asynchronously
                        if conn._con is None or conn.is_closed():
                            break
                        await anyio.sleep(0.01)
                raise RuntimeError("handler lost its connection")
        assert await self.count_effects(store, scope, "m1") == 0
        assert await store.claim(scope, "m1", owner="b", lease=60) is ClaimResult.CLAIMED

    async def test_inbox_type_matches_the_annotation(self, store: PostgresDedupStore) -> None:
        assert store.inbox_type is asyncpg.Connection
        assert issubclass(asyncpg.Connection, store.inbox_type)  # what the dispatcher checks
        assert isinstance(store, InboxStore)


@pytest.fixture
async def private_table(postgres_url: str) -> AsyncIterator[str]:
    name = f"eventbus_dedup_test_{uuid.uuid4().hex[:10]}"
    yield name
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"DROP TABLE IF EXISTS {name}")
    await conn.close()


async def test_table_created_once_by_racing_processes(
    postgres_url: str, private_table: str
) -> None:
    stores = [PostgresDedupStore(postgres_url, table=private_table) for _ in range(6)]
    results: list[ClaimResult] = []

    async def first_use(store: PostgresDedupStore) -> None:
        results.append(await store.claim("t/g", "m1", owner=str(id(store)), lease=60))

    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(first_use, store)
    finally:
        for store in stores:
            await store.close()
    assert sorted(r.value for r in results) == ["busy"] * 5 + ["claimed"]


async def test_expired_rows_are_cleaned_up_while_claiming(
    postgres_url: str, private_table: str
) -> None:
    store = PostgresDedupStore(postgres_url, table=private_table, cleanup_every=10)
    try:
        for i in range(50):
            await store.complete("t/g", f"old{i}", owner="a", ttl=0.1)
        await anyio.sleep(0.3)
        for i in range(10):  # the tenth claim sweeps first
            await store.claim("t/g", f"new{i}", owner="a", lease=60)
        pool = await store._get_pool()
        keys = await pool.fetch(f"SELECT key FROM {private_table}")
        assert sorted(r["key"] for r in keys) == sorted(f"new{i}" for i in range(10))
        await store.complete("t/g", "gone", owner="a", ttl=0.1)
        await anyio.sleep(0.3)
        assert await store.purge_expired(limit=5) == 1
        assert await store.purge_expired() == 0
    finally:
        await store.close()


async def test_given_pool_is_used_and_not_closed(postgres_url: str, private_table: str) -> None:
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=2)
    store = PostgresDedupStore(pool, table=private_table)
    assert await store.claim("t/g", "m1", owner="a", lease=60) is ClaimResult.CLAIMED
    await store.close()
    assert await pool.fetchval(f"SELECT count(*) FROM {private_table}") == 1
    await pool.close()


async def test_create_table_false_uses_an_existing_table(
    postgres_url: str, private_table: str
) -> None:
    store = PostgresDedupStore(postgres_url, table=private_table, create_table=False)
    with pytest.raises(asyncpg.UndefinedTableError):
        await store.claim("t/g", "m1", owner="a", lease=60)
    await store.close()


async def test_schema_qualified_table(postgres_url: str) -> None:
    schema = f"eventbus_test_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"CREATE SCHEMA {schema}")
    try:
        store = PostgresDedupStore(postgres_url, table=f"{schema}.dedup")
        assert await store.claim("t/g", "m1", owner="a", lease=60) is ClaimResult.CLAIMED
        await store.close()
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.dedup") == 1
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def test_unreachable_database_raises_broker_unavailable() -> None:
    store = PostgresDedupStore("postgresql://svc:s3cret@127.0.0.1:1/app")
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1:1") as caught:
        await store.claim("t/g", "m1", owner="a", lease=60)
    assert "s3cret" not in str(caught.value)
    assert isinstance(caught.value, ConnectionError)
    await store.close()


def test_repr_hides_the_password() -> None:
    store = PostgresDedupStore("postgresql://svc:s3cret@db.internal:5432/app")
    assert "s3cret" not in repr(store)
    assert "db.internal" in repr(store)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("mysql://u:p@h/db",), {}, "postgresql://"),
        ((42,), {}, "asyncpg.Pool"),
        (("postgresql://h/db",), {"table": "x; DROP TABLE y"}, "table"),
        (("postgresql://h/db",), {"max_pool_size": 0}, "max_pool_size"),
        (("postgresql://h/db",), {"cleanup_batch": -1}, "cleanup_batch"),
    ],
)
def test_bad_arguments(args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PostgresDedupStore(*args, **kwargs)  # type: ignore[arg-type]
