"""Flow through one subscription on a real broker: batches bounded by prefetch, and
pause/resume without leaving the group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import pytest
from eventbus_kafka import KafkaTransport
from eventbus_kafka.wire import to_record
from kafka_helpers import Live, group_of, messages, nothing_more, subscribe, take, wait_until

from eventbus.message import Message
from eventbus.transports.base import Destination, RawDelivery, SubscriptionSpec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

Name = Callable[[str], str]


def spec(topic: str, prefetch: int) -> SubscriptionSpec:
    return SubscriptionSpec(topic, "topic", group_of(topic), prefetch)


def membership(live: Live) -> tuple[int, int]:
    """(group generation, assignment epoch): both change on every rebalance."""
    sub = live.sub
    return sub._consumer._coordinator.generation, sub._owned.epoch  # type: ignore[attr-defined]


async def test_batches_hold_many_records_and_never_exceed_prefetch(
    transport: KafkaTransport, name: Name
) -> None:
    topic, total, prefetch = name("batches"), 300, 40
    await transport.publish(Destination(topic), messages(topic, total, key=lambda i: f"k{i % 9}"))
    live = await subscribe(transport, spec(topic, prefetch))
    batches = live.sub.__aiter__()
    held: list[RawDelivery] = []
    sizes: list[int] = []
    seen: list[Message] = []
    async with asyncio.timeout(60):
        while len(seen) < total:
            batch: Sequence[RawDelivery] = await anext(batches)
            assert batch, "never an empty batch"
            sizes.append(len(batch))
            held += batch
            seen += [d.message for d in batch]
            assert len(held) <= prefetch, f"{len(held)} unsettled, prefetch {prefetch}"
            if len(held) == prefetch:
                for d in held[:15]:  # settle some: exactly that much room opens
                    await d.ack()
                del held[:15]
    assert sorted(m.id for m in seen) == sorted(f"m{i}" for i in range(total))
    assert sizes[0] > 1 and max(sizes) == prefetch, sizes
    assert len(sizes) <= total // 10, f"{len(sizes)} batches for {total} records"
    by_key: dict[str | None, list[int]] = {}
    for m in seen:  # fetch order is partition order: per key, publish order
        by_key.setdefault(m.key, []).append(int(m.body))
    assert all(v == sorted(v) for v in by_key.values())
    await live.close()


async def test_full_subscription_yields_nothing_until_a_settle(
    transport: KafkaTransport, name: Name
) -> None:
    topic = name("full")
    await transport.publish(Destination(topic), messages(topic, 30, key=lambda i: "k"))
    live = await subscribe(transport, spec(topic, 10))
    got = await take(live, 10)
    assert await nothing_more(live, 2.0) == []
    for d in got[:3]:
        await d.ack()
    more = await take(live, 3)
    assert [d.message.id for d in got + more] == [f"m{i}" for i in range(13)]
    assert await nothing_more(live, 1.0) == []
    await live.close()


async def test_pause_stops_fetching_without_leaving_the_group(
    transport: KafkaTransport, name: Name
) -> None:
    topic = name("pause")
    live = await subscribe(transport, spec(topic, 100))
    await transport.publish(Destination(topic), messages(topic, 3))
    for d in await take(live, 3):
        await d.ack()
    before = membership(live)

    live.pause()
    consumer = live.sub._consumer  # type: ignore[attr-defined]
    await wait_until(lambda: set(consumer.paused()) == set(consumer.assignment()), within=5)
    later = [Message(id=f"p{i}", topic=topic, body=b"", key=f"k{i}") for i in range(12)]
    await transport.publish(Destination(topic), later)
    assert await nothing_more(live, 5.0) == [], "paused: nothing is handed out"

    live.resume()
    got = await take(live, 12)
    assert sorted(d.message.id for d in got) == sorted(m.id for m in later)
    assert membership(live) == before, "no rebalance: the consumer stayed in its group"
    assert not consumer.paused()
    for d in got:
        await d.ack()
    await live.close()


async def test_resume_keeps_a_partition_that_waits_for_a_retry_paused(
    transport: KafkaTransport, name: Name
) -> None:
    topic = name("pauseretry")
    live = await subscribe(transport, spec(topic, 100))
    due = time.time() + 6.0
    retry_topic = f"{topic}.{group_of(topic)}.retry"
    # Written straight to the retry topic: a publish this long goes through the delay tiers
    # first, and only its last second waits here.
    record = to_record(
        Message(id="later", topic=topic, body=b""), target_group=group_of(topic), not_before=due
    )
    assert not await transport._producer.send_all(retry_topic, [record])
    consumer = live.sub._consumer  # type: ignore[attr-defined]
    await wait_until(lambda: any(tp.topic == retry_topic for tp in consumer.paused()), within=10)
    waiting = set(consumer.paused())
    assert len(waiting) == 1

    live.pause()
    live.resume()
    assert set(consumer.paused()) == waiting, "resume lifts only the core's pause"
    await transport.publish(Destination(topic), [Message(id="now", topic=topic, body=b"")])
    (first,) = await take(live, 1)
    assert first.message.id == "now"
    (second,) = await take(live, 1)
    assert second.message.id == "later"
    assert time.time() >= due
    await first.ack()
    await second.ack()
    await live.close()


async def test_one_stuck_record_pauses_its_partition_at_the_offset_window(
    open_transport: Callable[..., KafkaTransport], name: Name
) -> None:
    # Bounded memory (DESIGN 8): behind one unfinished record, at most offset_window records
    # are tracked; then that partition waits until the stuck one is settled.
    transport = open_transport("partitions=1&offset_window=20")
    await transport.connect()
    try:
        topic = name("window")
        await transport.publish(Destination(topic), messages(topic, 60, key=lambda i: "k"))
        live = await subscribe(transport, spec(topic, 10))
        [stuck] = await take(live, 1)
        for _ in range(19):  # the rest of the window, each settled at once
            [delivery] = await take(live, 1)
            await delivery.ack()
        more = await nothing_more(live, within=3.0)
        assert more == [], f"{len(more)} records past the window of 20"
        trackers = live.sub._owned.trackers  # type: ignore[attr-defined]
        [tracker] = [t for tp, t in trackers.items() if tp.topic == topic]  # not the retry topic
        assert tracker.window == 20
        await stuck.ack()  # the head moves: the window empties and the partition resumes
        rest: list[int] = []
        for _ in range(40):
            [delivery] = await take(live, 1)
            rest.append(int(delivery.message.body))
            await delivery.ack()
        assert rest == list(range(20, 60))
        await live.close()
    finally:
        await transport.close()
