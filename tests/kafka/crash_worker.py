"""A consumer process for the kill -9 test: takes ``count`` records of a topic in group
``group``, acks every one except the record at offset ``k`` (a handler that never finishes),
prints ``ACKED``, then waits to be killed. Run: python crash_worker.py URL TOPIC GROUP COUNT K"""

import asyncio
import sys

from eventbus_kafka import KafkaTransport
from kafka_helpers import subscribe

from eventbus.transports.base import SubscriptionSpec


async def main(url: str, topic: str, group: str, count: int, k: int) -> None:
    transport = KafkaTransport(url)
    await transport.connect()
    sub = await subscribe(transport, SubscriptionSpec(topic, "topic", group, 100))
    print("LIVE", flush=True)
    taken = 0
    async for delivery in sub:
        taken += 1
        if int(delivery.native["offset"]) != k:
            await delivery.ack()
        if taken == count:
            break
    print("ACKED", flush=True)
    await asyncio.Event().wait()  # the slow handler: never returns, never acks k


if __name__ == "__main__":
    url, topic, group, count, k = sys.argv[1:]
    asyncio.run(main(url, topic, group, int(count), int(k)))
