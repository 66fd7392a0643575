"""Fixtures of the outbox tests: a fresh table name per test (dropped afterwards), a
connection to the test PostgreSQL, and a SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[Any]:
    """An asyncpg connection to the test database (the application's connection)."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    conn = await asyncpg.connect(postgres_url)
    yield conn
    await conn.close()


@pytest.fixture
async def pg_table(postgres_url: str) -> AsyncIterator[str]:
    """A unique outbox table name, its tables dropped after the test."""
    import asyncpg

    table = f"outbox_{uuid.uuid4().hex[:10]}"
    yield table
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_biz")
    finally:
        await conn.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "app.sqlite3"


@pytest.fixture
def name() -> str:
    """A unique topic or queue name."""
    return f"outbox-{uuid.uuid4().hex[:10]}"
