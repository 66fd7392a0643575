"""DESIGN 13 on Kafka with ACLs: a dead-letter topic the user may not write pauses the
subscription, turns the bus not ready and names the topic and the user; once an ACL grants it,
the subscription goes on and nothing is lost."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from tls_helpers import Certs, kafka_scram, secured_kafka_url

from eventbus import EventBus, RetryPolicy
from eventbus.testing.conformance import wait_for

pytestmark = pytest.mark.kafka

BROKERS = Path(__file__).resolve().parents[2] / "scripts" / "brokers"


async def _grant_limited(topic: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(BROKERS),
        "kafka-acls",
        "--add",
        "--allow-principal",
        "User:limited",
        "--operation",
        "All",
        "--topic",
        topic,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert await asyncio.wait_for(proc.wait(), 120) == 0


async def _records(kafka_url: str, topic: str) -> int:
    """How many records ``topic`` holds, read through the plain listener."""
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_url.split("://", 1)[1], auto_offset_reset="earliest"
    )
    await reader.start()
    try:
        count = 0
        for _ in range(10):
            batches = await reader.getmany(timeout_ms=500)
            count += sum(len(records) for records in batches.values())
        return count
    finally:
        await reader.stop()


async def test_a_refused_dead_letter_pauses_the_subscription_until_an_acl_grants_it(
    kafka_sasl_url: str,
    kafka_url: str,
    certs: Certs,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("limited-secret")
    suffix = uuid.uuid4().hex[:8]
    queue, dlq = f"limited.refused-{suffix}", f"forbidden-dlq-{suffix}"
    bus = EventBus(secured_kafka_url(kafka_sasl_url, **kafka_scram(certs, "limited", str(secret))))
    attempts: list[int] = []

    # Two lane workers: the second could take message 2 if fetching were not paused.
    @bus.consume(queue, concurrency=2, retry=RetryPolicy(max_attempts=1), dead_letter=dlq)
    async def fail(n: int) -> None:
        attempts.append(n)
        raise ValueError("poison")

    caplog.set_level(logging.ERROR, logger="eventbus.dispatch")
    async with bus:
        assert bus.ready
        await bus.send(queue, 1)
        await wait_for(lambda: not bus.ready, what="not ready while refused")
        await bus.send(queue, 2)  # fetching is paused: not handled while refused
        await asyncio.sleep(1.0)
        assert attempts == [1] and not bus.ready
        assert bus.subscribers[0].stats.received == 1, "fetching paused"
        refusals = [r.getMessage() for r in caplog.records if "refuses publishes" in r.getMessage()]
        assert refusals and dlq in refusals[0] and "'limited'" in refusals[0]
        assert "limited-secret" not in "".join(refusals)
        await _grant_limited(dlq)
        await wait_for(lambda: bus.ready, within=60, what="ready again once granted")
        await wait_for(lambda: attempts == [1, 2], what="fetching again")
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 2, what="both")
    assert await _records(kafka_url, dlq) == 2, "both dead letters kept"
