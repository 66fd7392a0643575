"""Fixtures of the dedup tests: a PostgreSQL table the tests' handlers count their effects in."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

EFFECTS_TABLE = "eventbus_test_effects"


@pytest.fixture
def effects_table() -> str:
    """Name of a table ``(scope text, key text)`` with no unique key, so duplicates show."""
    return EFFECTS_TABLE


@pytest.fixture
async def effects_db(postgres_url: str, effects_table: str) -> AsyncIterator[Any]:
    """A connection (autocommit) to the test database, with the effects table created."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    conn = await asyncpg.connect(postgres_url)
    async with conn.transaction():  # other test sessions may create it at the same moment
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", effects_table)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {effects_table} (scope text NOT NULL, key text NOT NULL)"
        )
    yield conn
    await conn.close()


@pytest.fixture
async def effects(postgres_url: str) -> AsyncIterator[tuple[Any, str]]:
    """A pool on the test database and a fresh table ``(id text)`` for a test's inbox writes."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    table = f"inbox_effects_{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=2)
    await pool.execute(f"CREATE TABLE {table} (id text)")
    yield pool, table
    await pool.execute(f"DROP TABLE {table}")
    await pool.close()
