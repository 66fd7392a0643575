"""DESIGN 13 on Kafka with ACLs: a dead-letter topic the user may not write pauses the
subscription, turns the bus not ready and names the topic and the user; once an ACL grants it,
the subscription goes on and nothing is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from refused_scenario import refused_until_granted
from tls_helpers import Certs, kafka_scram, secured_kafka_url

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
    url = secured_kafka_url(kafka_sasl_url, **kafka_scram(certs, "limited", str(secret)))
    dlq = await refused_until_granted(url, _grant_limited, caplog)
    assert await _records(kafka_url, dlq) == 2, "both dead letters kept"
