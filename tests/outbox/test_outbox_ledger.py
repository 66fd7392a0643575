"""The outbox's reliability ledger: real ``eventbus outbox relay`` processes, SIGKILLed and
restarted, a PostgreSQL restart, and a check of every committed row against what the broker
holds.

- **lost**: committed business rows (the truth: each committed with its outbox row) that
  never reached the topic. Must be 0.
- **phantoms**: messages on the topic whose transaction never committed. Must be 0.
- **order violations**: per key, a first delivery whose ``seq`` is below one delivered before
  it (a redelivered duplicate is a duplicate, never an order violation). Must be 0.
- **duplicates**: deliveries of a message id already delivered: the at-least-once price of a
  relay killed between publish and mark. Counted and printed.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from outbox_helpers import REPO, RelayProcess, Seen, eventually, order_violations

from eventbus import EventBus
from eventbus.outbox import PostgresOutbox

pytestmark = [pytest.mark.postgres, pytest.mark.reliability]

RELAYED = re.compile(r"relayed (\d+) row")
ROWS = int(os.environ.get("OUTBOX_LEDGER_ROWS", "3000"))
KEYS = 30
WRITE_SECONDS = 12.0


class Writers:
    """One task per key writes its rows in order, one transaction each: a business row and its
    outbox row. A write that meets a lost connection is retried; the business table's primary
    key tells a retry whose first try did commit."""

    def __init__(self, dsn: str, outbox: PostgresOutbox, table: str, topic: str) -> None:
        self.dsn, self.outbox, self.table, self.topic = dsn, outbox, table, topic
        self.attempted = 0
        self.retries = 0

    async def run(self, rows: int) -> None:
        per_key = rows // KEYS
        async with anyio.create_task_group() as tg:
            for k in range(KEYS):
                tg.start_soon(self._key, f"k{k}", per_key, WRITE_SECONDS / per_key)

    async def _key(self, key: str, count: int, pause: float) -> None:
        conn: Any = None
        seq = 0
        deadline = time.monotonic() + 120
        while seq < count:
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn)
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {self.table}_biz VALUES ($1, $2)", key, seq)
                    await self.outbox.publish(conn, self.topic, {"seq": seq}, key=key)
                self.attempted += 1
                seq += 1
                await anyio.sleep(pause)
            except asyncpg.UniqueViolationError:
                seq += 1  # the try before committed; only its reply was lost
            except Exception:
                # The database restarting: connection refused or lost, "shutting down", a
                # rollback on a dead connection. Retried on a new connection, bounded.
                self.retries += 1
                if time.monotonic() > deadline:
                    raise
                if conn is not None:
                    conn.terminate()
                conn = None
                await anyio.sleep(0.2)
        if conn is not None:
            await conn.close()


async def _committed(dsn: str, table: str) -> set[tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {(r[0], r[1]) for r in await conn.fetch(f"SELECT key, seq FROM {table}_biz")}
    finally:
        await conn.close()


async def _sent(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE sent_at IS NOT NULL"))
    except asyncpg.UndefinedTableError:
        return 0  # the first publish creates it
    finally:
        await conn.close()


async def _relaying(dsn: str, table: str, since: int) -> None:
    """Until the current relay marked rows: a kill then lands on a relay at work."""
    with anyio.fail_after(60):
        while await _sent(dsn, table) <= since:  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def _restart_postgres() -> float:
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(REPO / "scripts" / "brokers"),
        "restart",
        "postgres",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode(errors="replace")
    return time.monotonic() - start


def _report(name: str, seen: Seen, committed: set[tuple[str, int]], took: float) -> dict[str, Any]:
    first = seen.first_deliveries()
    delivered = {(k, p["seq"]) for k, p, _ in first if k is not None}
    result = {
        "scenario": name,
        "committed": len(committed),
        "delivered": len(seen.items),
        "lost": len(committed - delivered),
        "phantoms": len(delivered - committed),
        "order_violations": order_violations(first),
        "duplicates": len(seen.items) - len(first),
        "seconds": round(took, 1),
    }
    print(f"\noutbox ledger {result}")
    return result


async def _wait_delivered(seen: Seen, committed: set[tuple[str, int]], within: float) -> None:
    with anyio.move_on_after(within):  # then the ledger says what is missing
        while {(k, p["seq"]) for k, p, _ in seen.items} < committed:  # noqa: ASYNC110
            await anyio.sleep(0.1)


@pytest.mark.kafka
async def test_relays_killed_three_times_and_postgres_restarted(
    kafka_url: str, postgres_url: str, pg_table: str, name: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"CREATE TABLE {pg_table}_biz (key text, seq int, PRIMARY KEY (key, seq))")
    await conn.close()
    outbox = PostgresOutbox(postgres_url, table=pg_table)
    writers = Writers(postgres_url, outbox, pg_table, name)
    consumer = EventBus(kafka_url)
    seen = Seen()
    seen.subscribe(consumer, name)
    log = tmp_path / "relay.log"
    args = ("--url", kafka_url, "--table", pg_table, "--poll-interval", "0.05")
    env = {"EVENTBUS_OUTBOX_DB": postgres_url}
    relay = RelayProcess(*args, out=log, env=env)
    kills, restart_took = 0, 0.0
    try:
        async with consumer, anyio.create_task_group() as tg:
            tg.start_soon(writers.run, ROWS)
            for share in (0.15, 0.3, 0.45):
                sent_before = await _sent(postgres_url, pg_table)
                await eventually(lambda share=share: writers.attempted >= ROWS * share)
                await _relaying(postgres_url, pg_table, sent_before)
                relay.kill()  # at work: with rows coming, often between a publish and its mark
                kills += 1
                relay = RelayProcess(*args, out=log, env=env)
            await eventually(lambda: writers.attempted >= ROWS * 0.6)
            restart_took = await _restart_postgres()
        committed = await _committed(postgres_url, pg_table)
        async with consumer:
            await _wait_delivered(seen, committed, within=60)
        assert relay.stop() == 0, relay.text[-3000:]
    finally:
        relay.kill()
        await outbox.close()
    result = _report("kill x3 + postgres restart", seen, committed, time.monotonic() - started)
    print(
        f"relay kills {kills}, postgres restart {restart_took:.1f}s, writer retries "
        f"{writers.retries}"
    )
    assert len(committed) == ROWS
    assert result["lost"] == 0, log.read_text()[-3000:]
    assert result["phantoms"] == 0
    assert result["order_violations"] == 0
    assert "Traceback" not in log.read_text()


@pytest.mark.amqp
async def test_two_relays_racing(
    amqp_url: str, postgres_url: str, pg_table: str, name: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"CREATE TABLE {pg_table}_biz (key text, seq int, PRIMARY KEY (key, seq))")
    outbox = PostgresOutbox(postgres_url, table=pg_table, retention=0)
    await outbox.open()
    consumer = EventBus(amqp_url)
    seen = Seen()
    seen.subscribe(consumer, name)
    args = ("--url", amqp_url, "--table", pg_table, "--retention", "0", "--poll-interval", "0.05")
    env = {"EVENTBUS_OUTBOX_DB": postgres_url}
    relays: list[RelayProcess] = []
    try:
        async with consumer:
            relays = [RelayProcess(*args, out=tmp_path / f"relay{i}.log", env=env) for i in (0, 1)]
            await eventually(lambda: all("relaying:" in r.text for r in relays))
            # Both relays poll while the rows come: one transaction per round, a row per key.
            for seq in range(60):
                async with conn.transaction():
                    for k in range(KEYS):
                        await conn.execute(
                            f"INSERT INTO {pg_table}_biz VALUES ($1, $2)", f"k{k}", seq
                        )
                        await outbox.publish(conn, name, {"seq": seq}, key=f"k{k}")
                await anyio.sleep(0.02)
            committed = await _committed(postgres_url, pg_table)
            await _wait_delivered(seen, committed, within=60)
            await anyio.sleep(1.0)  # a late duplicate would show now
        codes = [r.stop() for r in relays]
    finally:
        for r in relays:
            r.kill()
        await conn.close()
        await outbox.close()
    result = _report("two relays racing", seen, committed, time.monotonic() - started)
    shares = [int(RELAYED.findall(r.text)[-1]) for r in relays]
    print(f"rows relayed by each relay: {shares}")
    assert codes == [0, 0]
    assert result["lost"] == 0
    assert result["phantoms"] == 0
    assert result["order_violations"] == 0
    assert result["duplicates"] == 0  # no double send under normal operation
    assert sum(shares) == len(committed)
    assert all(shares), "both relays should have taken buckets"
