"""The aiokafka consumer of a subscription: how it is configured, and how it gets partitions.

A group's consumer joins with manual commits only (`committer`); a broadcast has no group: it
is assigned every partition and starts at their end, committing nothing.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

from eventbus_kafka.admin import HEADROOM, TopicAdmin
from eventbus_kafka.revocation import REVOKE_COMMIT_TIMEOUT
from eventbus_kafka.url import KafkaSettings

__all__ = ["assign_everything", "new_consumer"]

TP = Any  # aiokafka TopicPartition

_REBALANCE_SLACK = 15.0
"""Added to the drain and the revocation commit for the group's rebalance timeout: a member
still busy with a revocation is not kicked out of the group for it."""


def new_consumer(settings: KafkaSettings, group: str | None) -> Any:
    drain = settings.revoke_drain_timeout
    return AIOKafkaConsumer(
        **settings.client_options(),
        group_id=group,
        # Auto-commit would commit what was fetched, not what was handled (PITFALLS).
        enable_auto_commit=False,
        # Queues and retry topics must never skip what was published before the group
        # existed; offset_reset=latest is applied by hand to a topic group's main topic.
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=settings.max_message_size + HEADROOM,
        heartbeat_interval_ms=1000,
        rebalance_timeout_ms=int((drain + REVOKE_COMMIT_TIMEOUT + _REBALANCE_SLACK) * 1000),
    )


async def assign_everything(consumer: Any, topics: list[str], admin: TopicAdmin) -> list[TP]:
    """For a broadcast: every partition of ``topics``, positioned at the end (it receives
    what is published from now on)."""
    await consumer.start()
    tps = [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in await admin.topic_partitions(topic) or ()
    ]
    consumer.assign(tps)
    if tps:
        while not await consumer.seek_to_end(*tps):
            pass
    return tps
