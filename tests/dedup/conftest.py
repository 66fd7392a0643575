"""Fixtures of the dedup tests: a PostgreSQL table the tests' handlers count their effects in."""

from __future__ import annotations

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
