"""SqliteOutbox on a real file, relayed through a memory bus; several relays on one file."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from outbox_helpers import Seen, eventually, order_violations

from eventbus import BrokerUnavailableError, ConfigurationError, EventBus, Message
from eventbus.outbox import NotInTransactionError, SqliteOutbox
from eventbus.transports.base import Destination
from eventbus.transports.memory import MemoryTransport


def _app_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)  # Python's default: an implicit BEGIN before writes
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, key TEXT)")
    conn.commit()
    return conn


async def test_commit_publishes_rollback_does_not_and_table_is_created_on_first_use(
    sqlite_path: Path, name: str
) -> None:
    conn = _app_connection(sqlite_path)
    outbox = SqliteOutbox(sqlite_path, table="outbox")
    conn.execute("INSERT INTO orders (key) VALUES ('a')")
    kept = await outbox.publish(conn, name, {"seq": 1}, key="a")  # creates the table
    conn.commit()
    conn.execute("INSERT INTO orders (key) VALUES ('b')")
    await outbox.publish(conn, name, {"seq": 2}, key="b")
    conn.rollback()

    bus = EventBus("memory://", outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    async with bus:
        await seen.wait_for(1)
        await anyio.sleep(0.5)
    assert seen.items == [("a", {"seq": 1}, kept)]
    assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
    conn.close()


async def test_table_created_in_a_rolled_back_transaction_comes_back(
    sqlite_path: Path, name: str
) -> None:
    conn = sqlite3.connect(sqlite_path, isolation_level=None)
    outbox = SqliteOutbox(sqlite_path, table="outbox")
    conn.execute("BEGIN")
    await outbox.publish(conn, name, {"seq": 1})
    conn.execute("ROLLBACK")
    conn.execute("BEGIN")
    await outbox.publish(conn, name, {"seq": 2})
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
    conn.close()


async def test_autocommit_connection_without_begin_is_refused(sqlite_path: Path, name: str) -> None:
    conn = sqlite3.connect(sqlite_path, isolation_level=None)
    outbox = SqliteOutbox(sqlite_path)
    with pytest.raises(NotInTransactionError, match="autocommit"):
        await outbox.publish(conn, name, {"seq": 1})
    with pytest.raises(ConfigurationError, match=r"sqlite3\.Connection"):
        await outbox.publish(object(), name, {"seq": 1})  # type: ignore[arg-type]
    conn.close()
    with pytest.raises(ConfigurationError, match="plain SQL identifier"):
        SqliteOutbox(sqlite_path, table="x y")
    with pytest.raises(ConfigurationError, match="schema-qualified"):
        SqliteOutbox(sqlite_path, table="main.outbox")


async def test_two_relays_on_one_file_keep_order_and_lose_nothing(
    sqlite_path: Path, name: str
) -> None:
    conn = _app_connection(sqlite_path)
    writer = SqliteOutbox(sqlite_path)
    buses = []
    seen = Seen()
    for _ in range(2):
        bus = EventBus("memory://", outbox=SqliteOutbox(sqlite_path, retention=0, lease=5.0))
        buses.append(bus)
    seen.subscribe(buses[0], name)  # one memory broker per URL: both relays feed it
    async with buses[0], buses[1]:
        for seq in range(400):
            await writer.publish(conn, name, {"seq": seq}, key=f"k{seq % 5}")
            if seq % 20 == 19:
                conn.commit()
                await anyio.sleep(0.01)
        conn.commit()
        await seen.wait_for(400)
    first = seen.first_deliveries()
    assert len(first) == 400
    assert order_violations(first) == 0
    assert len(seen.items) == 400  # a clean run, one relay at a time: no duplicate
    relayed = [b.outbox_relay.stats["eventbus_outbox"].relayed for b in buses]  # type: ignore[union-attr]
    print(f"sqlite relays relayed {relayed}")
    assert conn.execute("SELECT count(*) FROM eventbus_outbox").fetchone() == (0,)
    conn.close()


async def test_backlog_and_retention(sqlite_path: Path, name: str) -> None:
    conn = _app_connection(sqlite_path)
    outbox = SqliteOutbox(sqlite_path, retention=60)
    for seq in range(6):
        await outbox.publish(conn, name, {"seq": seq})
    conn.commit()
    conn.execute("UPDATE eventbus_outbox SET created_at = created_at - 30")
    conn.commit()
    backlog = await outbox.backlog()
    assert backlog.unsent == 6
    assert 29 < backlog.oldest_age < 60
    conn.execute("UPDATE eventbus_outbox SET sent_at = created_at - 100 WHERE id <= 4")
    conn.execute("UPDATE eventbus_outbox SET sent_at = created_at WHERE id > 4")
    conn.commit()
    assert await outbox.purge_sent(limit=3) == 3
    assert await outbox.purge_sent(limit=3) == 1
    assert (await outbox.backlog()).unsent == 0
    await outbox.close()
    conn.close()


async def test_row_written_by_a_handler_carries_its_cause(sqlite_path: Path, name: str) -> None:
    conn = _app_connection(sqlite_path)
    outbox = SqliteOutbox(sqlite_path)
    bus = EventBus("memory://", outbox=outbox)
    effects: list[Message] = []

    @bus.subscribe(name, group="g")
    async def handle(payload: dict[str, int]) -> None:
        conn.execute("INSERT INTO orders (key) VALUES ('a')")
        await outbox.publish(conn, f"{name}-effects", {"seq": payload["seq"]}, key="a")
        conn.commit()

    @bus.subscribe(f"{name}-effects", group="g")
    async def effect(message: Message) -> None:
        effects.append(message)

    async with bus:
        cause = await bus.publish(name, {"seq": 1}, correlation_id="corr-1")
        await eventually(lambda: effects)
    assert effects[0].headers["eventbus-causation-id"] == cause
    assert effects[0].correlation_id == "corr-1"
    conn.close()


def test_two_outboxes_need_two_table_names(sqlite_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="its own table name"):
        EventBus("memory://", outbox=[SqliteOutbox(sqlite_path), SqliteOutbox(sqlite_path)])
    bus = EventBus(
        "memory://", outbox=[SqliteOutbox(sqlite_path), SqliteOutbox(sqlite_path, table="b")]
    )
    assert bus.outbox_relay is not None
    assert set(bus.outbox_relay.stats) == {"eventbus_outbox", "b"}


class FlakyBroker(MemoryTransport):
    """A memory transport whose first ``failures`` publishes fail after sending half the batch
    (a broker that confirmed some messages and then went away)."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        if self.failures > 0:
            self.failures -= 1
            await super().publish(to, messages[: len(messages) // 2])
            raise BrokerUnavailableError("flaky:1", "connection lost")
        await super().publish(to, messages)


async def test_failed_publishes_are_retried_in_order_and_lose_nothing(
    sqlite_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "eventbus.outbox")
    conn = _app_connection(sqlite_path)
    outbox = SqliteOutbox(sqlite_path)
    for seq in range(50):
        await outbox.publish(conn, name, {"seq": seq}, key=f"k{seq % 2}")
    conn.commit()
    url = f"memory://flaky-{name}"
    bus = EventBus(transport=FlakyBroker(url, failures=3), outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    async with bus:
        await seen.wait_for(50 + 3 * 25, within=30)  # each failed try sent 25 first
    first = seen.first_deliveries()
    assert sorted(p["seq"] for _, p, _ in first) == list(range(50))
    assert order_violations(first) == 0  # per key
    assert bus.outbox_relay is not None
    stats = bus.outbox_relay.stats["eventbus_outbox"]
    assert (stats.failures, stats.relayed) == (3, 50)
    assert "its rows stay unsent, trying again" in caplog.text
    assert "relaying again" in caplog.text
    conn.close()
