"""(a) kill -9 while a slow message at offset k is unfinished and later offsets are done:
the group's committed offset stops at k, and a restarted consumer gets k again."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]
from eventbus_kafka import KafkaTransport
from kafka_helpers import group_of, messages, nothing_more, subscribe, take

from eventbus.transports.base import Destination, SubscriptionSpec

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.timeout(300)]

WORKER = Path(__file__).with_name("crash_worker.py")


async def _line(stream: asyncio.StreamReader) -> str:
    return (await stream.readline()).decode().strip()


async def test_killed_consumer_redelivers_the_unfinished_offset(
    transport: KafkaTransport, name: Callable[[str], str], kafka_url: str
) -> None:
    topic, count, k = name("kill"), 10, 4
    group = group_of(topic)
    await transport.publish(Destination(topic), messages(topic, count, key=lambda i: "one"))
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), kafka_url, topic, group, str(count), str(k),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert worker.stdout is not None
    try:
        async with asyncio.timeout(120):
            assert await _line(worker.stdout) == "LIVE"
            assert await _line(worker.stdout) == "ACKED"

        # The worker commits periodically: the commit reaches k, and never goes past it.
        tp = (topic, (murmur2(b"one") & 0x7FFFFFFF) % 6)
        async with asyncio.timeout(60):
            while True:
                offset, metadata = (await transport._admin.group_offsets(group)).get(tp, (-1, ""))
                assert offset <= k
                if offset == k:
                    break
                await asyncio.sleep(0.2)
        assert metadata  # the finished offsets above k travel in the commit metadata
    finally:
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
    assert worker.returncode == -signal.SIGKILL

    again = await subscribe(transport, SubscriptionSpec(topic, "topic", group, 100))
    (redelivered,) = await take(again, 1, within=120)
    assert redelivered.message.id == f"m{k}"
    assert int(redelivered.native["offset"]) == k
    assert await nothing_more(again, 2.0) == []  # what was acked before the kill stays done
    await redelivered.ack()
    await again.close()
    final = await transport._admin.group_offsets(group)
    assert final[tp][0] == count
