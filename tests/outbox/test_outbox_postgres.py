"""PostgresOutbox on a real PostgreSQL, relayed through a memory bus."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from outbox_helpers import Seen, eventually, order_violations

from eventbus import ConfigurationError, EventBus, Message
from eventbus.outbox import NotInTransactionError, OutboxBacklog, PostgresOutbox

pytestmark = pytest.mark.postgres


async def _count(pg: Any, table: str, where: str = "true") -> int:
    return int(await pg.fetchval(f"SELECT count(*) FROM {table} WHERE {where}"))


async def test_commit_publishes_and_rollback_publishes_nothing(
    postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    outbox = PostgresOutbox(postgres_url, table=pg_table)
    bus = EventBus("memory://", outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    async with bus:
        async with pg.transaction():
            kept = await outbox.publish(pg, name, {"seq": 1}, key="a", headers={"tenant": "t"})
        with pytest.raises(RuntimeError, match="application failed"):
            async with pg.transaction():
                await outbox.publish(pg, name, {"seq": 2}, key="a")
                raise RuntimeError("application failed")
        await seen.wait_for(1)
        await anyio.sleep(0.5)  # a row rolled back would have gone out by now
    assert [(k, p, i) for k, p, i in seen.items] == [("a", {"seq": 1}, kept)]
    assert await _count(pg, pg_table) == 1  # only the committed row exists


async def test_message_keeps_what_was_given_at_insert(
    postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    outbox = PostgresOutbox(postgres_url, table=pg_table)
    bus = EventBus("memory://", outbox=outbox)
    got: list[Message] = []

    @bus.subscribe(name, group="g")
    async def record(message: Message) -> None:
        got.append(message)

    async with pg.transaction():  # written before the bus runs: the relay finds it at start
        mid = await outbox.publish(
            pg, name, {"x": 1}, key="k", headers={"h": "v"}, message_id="m-1", correlation_id="c"
        )
    assert mid == "m-1"
    async with bus:
        await eventually(lambda: got)
    message = got[0]
    assert (message.id, message.key, message.correlation_id) == ("m-1", "k", "c")
    assert message.headers["h"] == "v"
    assert message.content_type == "application/json"
    assert message.body == b'{"x":1}'
    created = await pg.fetchval(f"SELECT created_at FROM {pg_table}")
    assert message.timestamp == created


async def test_order_per_key_with_many_keys_and_queues(
    postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    outbox = PostgresOutbox(postgres_url, table=pg_table)
    bus = EventBus("memory://", outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    commands: list[int] = []

    @bus.consume(f"{name}-q")
    async def command(payload: dict[str, int]) -> None:
        commands.append(payload["seq"])

    async with pg.transaction():
        for seq in range(300):
            await outbox.publish(pg, name, {"seq": seq}, key=f"k{seq % 7}")
        await outbox.send(pg, f"{name}-q", {"seq": 0})
    async with bus:
        await seen.wait_for(300)
        await eventually(lambda: commands)
    assert order_violations(seen.items) == 0
    assert len({i for _, _, i in seen.items}) == 300
    assert commands == [0]


async def test_table_created_on_first_use_outside_the_application_transaction(
    postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    outbox = PostgresOutbox(postgres_url, table=pg_table)
    assert await pg.fetchval("SELECT to_regclass($1)", pg_table) is None
    with pytest.raises(RuntimeError):
        async with pg.transaction():
            await outbox.publish(pg, name, {"seq": 1})
            raise RuntimeError("rolled back")
    # The rollback took the row, not the table.
    assert await pg.fetchval("SELECT to_regclass($1)", pg_table) is not None
    assert await _count(pg, pg_table) == 0
    await outbox.close()


async def test_retention_zero_deletes_sent_rows_and_retention_purges_old_ones(
    postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    outbox = PostgresOutbox(postgres_url, table=pg_table, retention=0)
    bus = EventBus("memory://", outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    async with bus:
        async with pg.transaction():
            for seq in range(5):
                await outbox.publish(pg, name, {"seq": seq}, key="k")
        await seen.wait_for(5)
        with anyio.fail_after(5):
            while await _count(pg, pg_table):  # noqa: ASYNC110 (polls the database)
                await anyio.sleep(0.05)

    kept = PostgresOutbox(postgres_url, table=pg_table, retention=3600)
    async with pg.transaction():
        for seq in range(25):
            await kept.publish(pg, name, {"seq": seq})
    await pg.execute(
        f"UPDATE {pg_table} SET sent_at = now() - interval '2 hours' WHERE id % 5 <> 0"
    )
    await pg.execute(f"UPDATE {pg_table} SET sent_at = now() WHERE id % 5 = 0")
    # In bounded batches: 20 rows are old enough, 5 were sent just now.
    assert await kept.purge_sent(limit=8) == 8
    assert await kept.purge_sent(limit=8) == 8
    assert await kept.purge_sent(limit=8) == 4
    assert await _count(pg, pg_table) == 5
    await kept.close()


async def test_backlog_method_and_prometheus_gauges(
    postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    pytest.importorskip("prometheus_client")
    outbox = PostgresOutbox(postgres_url, table=pg_table)
    async with pg.transaction():
        for seq in range(4):
            await outbox.publish(pg, name, {"seq": seq}, key="k")
    await pg.execute(f"UPDATE {pg_table} SET created_at = now() - interval '90 seconds'")
    backlog = await outbox.backlog()
    assert backlog.unsent == 4
    assert 89 < backlog.oldest_age < 120
    await outbox.close()

    bus = EventBus("memory://", outbox=outbox, metrics=True)
    seen = Seen()
    seen.subscribe(bus, name)
    relay = bus.outbox_relay
    assert relay is not None
    relay.backlog_interval = 0.05
    stats = relay.stats[pg_table]
    async with bus:
        await seen.wait_for(4)
        # The relay reads the backlog after each round (every 0.05 s here).
        await eventually(lambda: stats.relayed == 4 and stats.backlog == OutboxBacklog(0, 0.0))
        registry = bus.metrics_registry
        assert registry is not None

        def sample(metric: str, **labels: str) -> float | None:
            return registry.get_sample_value(metric, labels or {"table": pg_table})

        assert sample("eventbus_outbox_unsent_messages") == 0
        assert sample("eventbus_outbox_oldest_unsent_age_seconds") == 0
        assert sample("eventbus_outbox_relayed_messages_total") == 4
        # Through the bus's own publish path:
        assert sample("eventbus_published_messages_total", destination=name, kind="topic") == 4
        relay.backlog_interval = 3600  # keep the reading below in place
        await anyio.sleep(0.2)
        stats.backlog = OutboxBacklog(unsent=7, oldest_age=12.5)
        assert sample("eventbus_outbox_unsent_messages") == 7
        assert sample("eventbus_outbox_oldest_unsent_age_seconds") == 12.5
    assert registry.get_sample_value("eventbus_outbox_unsent_messages", {"table": pg_table}) is None


async def test_publish_outside_a_transaction_is_refused(
    postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    outbox = PostgresOutbox(postgres_url, table=pg_table)
    with pytest.raises(NotInTransactionError, match="no open transaction"):
        await outbox.publish(pg, name, {"seq": 1})
    with pytest.raises(ConfigurationError, match="invalid topic name"):
        async with pg.transaction():
            await outbox.publish(pg, "bad name!", {"seq": 1})
    with pytest.raises(ConfigurationError, match="eventbus- prefix"):
        async with pg.transaction():
            await outbox.publish(pg, name, {"seq": 1}, headers={"eventbus-x": "1"})
    await outbox.close()


def test_bad_arguments_are_refused_at_construction(postgres_url: str) -> None:
    with pytest.raises(ConfigurationError, match="plain SQL identifier"):
        PostgresOutbox(postgres_url, table="outbox; DROP TABLE users")
    with pytest.raises(ConfigurationError, match="retention"):
        PostgresOutbox(postgres_url, retention=-1)
    with pytest.raises(ConfigurationError, match=r"postgresql://.*\*\*\*"):
        PostgresOutbox("mysql://user:secret@host/db")


async def test_unreachable_database_names_the_address_without_password(pg: Any) -> None:
    outbox = PostgresOutbox("postgresql://app:s3cret@127.0.0.1:1/nowhere", table="t")
    with pytest.raises(Exception) as caught:
        await outbox.backlog()
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_wrong_password_stops_the_relay_with_a_clear_error(postgres_url: str) -> None:
    scheme, rest = postgres_url.split("://", 1)
    user = rest.split(":", 1)[0]
    host = rest.rsplit("@", 1)[1]
    wrong = f"{scheme}://{user}:wrong-s3cret@{host}"
    bus = EventBus("memory://", outbox=PostgresOutbox(wrong, table="t"))
    with pytest.raises(BaseException) as caught:  # the task group wraps it
        async with bus:
            await anyio.sleep(5)
    text = repr(caught.value) + str(caught.value.__cause__)
    assert "wrong-s3cret" not in text
    error = caught.value
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, ConfigurationError)
    assert host.split("/")[0] in str(error)


async def test_an_app_connection_with_a_json_codec_keeps_the_headers(
    postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    """The application's connection decodes json/jsonb itself (asyncpg's documented recipe):
    the headers are stored as text, so they arrive as they were given, not encoded twice."""
    import json

    await pg.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await pg.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    outbox = PostgresOutbox(postgres_url, table=pg_table)
    bus = EventBus("memory://", outbox=outbox)
    got: list[Message] = []

    @bus.subscribe(name, group="g")
    async def record(message: Message) -> None:
        got.append(message)

    async with pg.transaction():
        await outbox.publish(pg, name, {"x": 1}, headers={"tenant": "t-1"})
    async with bus:
        await eventually(lambda: got)
    assert got[0].headers["tenant"] == "t-1"
    assert await _count(pg, pg_table, "failed IS NULL") == 1
