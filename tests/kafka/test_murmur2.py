"""The key picks the partition like Java clients do: murmur2, positive, modulo partitions."""

from collections.abc import Callable

import pytest
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]
from eventbus_kafka import KafkaTransport
from kafka_helpers import messages, subscribe, take

from eventbus.transports.base import Destination, SubscriptionSpec

# Kafka's own UtilsTest.testMurmur2 vectors (signed Java ints).
UTILS_TEST_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}

# Partition of each key over 6 partitions, computed with the Java client itself
# (kafka-clients 4.4.0: Utils.toPositive(Utils.murmur2(key.getBytes(UTF_8))) % 6).
JAVA_PARTITION_OF_6 = {
    "21": 0,
    "foobar": 0,
    "a-little-bit-long-string": 2,
    "a-little-bit-longer-string": 5,
    "abc": 3,
    "order-42": 0,
    "ключ": 2,
    "日本": 3,
}


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(("key", "expected"), UTILS_TEST_VECTORS.items())
def test_murmur2_matches_kafka_utils_test(key: str, expected: int) -> None:
    assert _signed(murmur2(key.encode())) == expected


@pytest.mark.kafka
async def test_published_keys_land_on_the_java_partition(
    transport: KafkaTransport, name: Callable[[str], str]
) -> None:
    topic = name("murmur")
    keys = list(JAVA_PARTITION_OF_6)
    sub = await subscribe(transport, SubscriptionSpec(topic, "topic", f"{topic}-g", 100))
    batch = messages(topic, len(keys), key=lambda i: keys[i])
    await transport.publish(Destination(topic), batch)
    got = await take(sub, len(keys))
    landed = {d.message.key: int(d.native["partition"]) for d in got}
    assert landed == JAVA_PARTITION_OF_6
    await sub.close()
