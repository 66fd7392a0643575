"""Records fetched for a partition assigned in the same ``getmany``, before the assignment was
adopted, are given back (seek) and taken only once the previous owner's commit metadata was
read: what it finished above its commit is then skipped, not redone."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]
from eventbus_kafka.subscription import KafkaSubscription
from eventbus_kafka.url import parse_url
from kafka_helpers import RecordingOwner

from eventbus.transports.base import SubscriptionSpec


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[Any, int]] = []

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


def record(tp: Any, offset: int) -> Any:
    return SimpleNamespace(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        key=b"k",
        value=b"v",
        headers=(),
        timestamp=0,
    )


async def test_records_of_an_unadopted_partition_wait_for_its_commit_metadata() -> None:
    tp = TopicPartition("orders", 0)
    sub = KafkaSubscription(
        parse_url("kafka://127.0.0.1:9092"),
        SubscriptionSpec("orders", "topic", "g", 32),
        RecordingOwner(),
        topics=["orders"],
        group="g",
        admin=None,  # type: ignore[arg-type]
    )
    consumer = FakeConsumer()
    sub._fetcher.consumer = consumer
    sub._owned.assign([tp])  # assigned inside getmany, not adopted yet
    sub._owned.adopt_needed = False
    batch = {tp: [record(tp, o) for o in range(5, 10)]}

    sub._fetcher.take(batch, 32)
    assert not len(sub._buffer), "nothing is taken before the previous owner's metadata is read"
    assert consumer.seeks == [(tp, 5)]  # given back, fetched again after adoption
    assert sub._owned.adopt_needed

    # The previous owner committed 5 and had finished 6 and 8 above it.
    sub._owned.adopt({tp: 5}, {("orders", 0): (5, "eb1:1,3")})
    sub._fetcher.take(batch, 32)
    assert [t.offset for t in sub._buffer.take(32, sub._owned.current)] == [5, 7, 9]
