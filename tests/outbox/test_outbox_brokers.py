"""`EventBus(outbox=...)` relaying to real Kafka and RabbitMQ, and under ``bus.publisher()``."""

from __future__ import annotations

from typing import Any

import pytest
from outbox_helpers import Seen, order_violations

from eventbus import EventBus
from eventbus.outbox import PostgresOutbox

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["kafka", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> str:
    request.applymarker(getattr(pytest.mark, request.param))
    return str(request.getfixturevalue(f"{request.param}_url"))


async def test_relay_in_a_consuming_bus(
    broker_url: str, postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    outbox = PostgresOutbox(postgres_url, table=pg_table)
    bus = EventBus(broker_url, outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    ids = []
    async with bus:
        for batch in range(10):
            async with pg.transaction():
                for i in range(30):
                    seq = batch * 30 + i
                    ids.append(await outbox.publish(pg, name, {"seq": seq}, key=f"k{seq % 6}"))
        await seen.wait_for(300, within=60)
    assert sorted(i for _, _, i in seen.items) == sorted(ids)  # each once, none lost
    assert order_violations(seen.items) == 0


async def test_relay_under_publisher_while_another_bus_consumes(
    broker_url: str, postgres_url: str, pg: Any, pg_table: str, name: str
) -> None:
    consumer = EventBus(broker_url)
    seen = Seen()
    seen.subscribe(consumer, name)
    outbox = PostgresOutbox(postgres_url, table=pg_table, retention=0)
    web = EventBus(broker_url, outbox=outbox)
    async with consumer, web.publisher():
        async with pg.transaction():
            for seq in range(50):
                await outbox.publish(pg, name, {"seq": seq}, key="only")
        await seen.wait_for(50, within=60)
    assert [p["seq"] for _, p, _ in seen.items] == list(range(50))
    assert await pg.fetchval(f"SELECT count(*) FROM {pg_table}") == 0  # retention=0
