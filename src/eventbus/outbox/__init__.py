"""The transactional outbox (DESIGN 12): write messages in the application's own database
transaction; a relay publishes what committed, at least once, in order per key.

    outbox = PostgresOutbox("postgresql://app@db/app")
    bus = EventBus("kafka://...", outbox=outbox)          # the bus runs the relay

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO orders ...")
        await outbox.publish(conn, "orders", OrderPlaced(...), key="order-42")

asyncpg is imported on first use (``pip install 'eventbus[postgres]'``); SQLite needs nothing.
docs/outbox.md has the guarantees and the decisions behind them.
"""

from eventbus.outbox.base import NotInTransactionError, Outbox, OutboxBacklog
from eventbus.outbox.postgres import PostgresOutbox
from eventbus.outbox.relay import OutboxRelay
from eventbus.outbox.sqlite import SqliteOutbox
from eventbus.outbox.stats import RelayStats

__all__ = [
    "NotInTransactionError",
    "Outbox",
    "OutboxBacklog",
    "OutboxRelay",
    "PostgresOutbox",
    "RelayStats",
    "SqliteOutbox",
]
