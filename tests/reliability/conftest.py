"""Fixtures of the reliability scenarios (docs/reliability.md): the ledger tables, a ledger
collector printed at the end of the run, scenario settings from the environment."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from rel_harness import ScenarioSettings
from rel_ledger import SCHEMA, Ledger, table

_LEDGERS = pytest.StashKey[list[Ledger]]()


@pytest.fixture(scope="session")
def rel_dsn(postgres_url: str) -> str:
    """The PostgreSQL the workers write their ledger rows (and inbox effects) to."""

    async def create() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            # Serialized: CREATE ... IF NOT EXISTS alone can race between sessions.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('rel_ledger_schema'))")
                await conn.execute(SCHEMA)
        finally:
            await conn.close()

    asyncio.run(create())
    return postgres_url


@pytest.fixture(scope="session")
def rel_settings() -> ScenarioSettings:
    return ScenarioSettings.from_env()


@pytest.fixture
def record_ledger(request: pytest.FixtureRequest) -> Callable[[Ledger], None]:
    """Keep a scenario's ledger for the end-of-run table (and ``REL_LEDGER_OUT``, JSON lines)."""

    def record(ledger: Ledger) -> None:
        request.config.stash.setdefault(_LEDGERS, []).append(ledger)
        out = os.environ.get("REL_LEDGER_OUT")
        if out:
            with Path(out).open("a") as f:
                f.write(json.dumps(json.loads(ledger.to_json())) + "\n")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    ledgers = terminalreporter.config.stash.get(_LEDGERS, [])
    if ledgers:
        terminalreporter.section("reliability ledgers")
        terminalreporter.write_line(table(ledgers))
