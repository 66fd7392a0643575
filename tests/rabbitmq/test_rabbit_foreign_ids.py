"""A message a foreign producer sent without ``message_id`` is never skipped as a duplicate of
another delivery (DESIGN 4): the adapter gives it a random id per delivery, so identical
commands are each handled. aiormq always sets a ``message_id``, so the messages are published
by a bare AMQP client (raw_amqp.py)."""

from __future__ import annotations

import anyio
import pytest
from rabbit_helpers import queue_counts, unique_suffix
from raw_amqp import raw_publish

from eventbus import Delivery, EventBus, MemoryDedupStore, Message
from eventbus.testing.conformance import wait_for

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(120)]


async def test_messages_without_message_id_are_each_handled_once_with_dedup(
    amqp_url: str,
) -> None:
    topic, group = f"rmq-noid-{unique_suffix()}", "g"
    store = MemoryDedupStore()
    bus = EventBus(amqp_url, dedup_store=store, graceful_timeout=5)
    handled: list[tuple[str, bytes, int]] = []

    @bus.subscribe(topic, group=group, dedup=True)
    async def handle(message: Message, delivery: Delivery) -> None:
        handled.append((message.id, message.body, delivery.attempt))

    stats = bus.subscribers[0].stats
    async with bus:  # declares the topic exchange and the group's queue
        # Two identical commands (an id derived from the content would make them duplicates)
        # and a different one; no message_id property, no eventbus headers.
        await raw_publish(
            amqp_url,
            exchange=topic,
            routing_key="",
            bodies=[b'{"n":1}', b'{"n":1}', b'{"n":2}'],
            headers={"origin": "legacy"},
        )
        await wait_for(lambda: len(handled) >= 3, what="three deliveries handled")
        await anyio.sleep(1.0)  # nothing more comes

    assert sorted(body for _id, body, _attempt in handled) == [b'{"n":1}', b'{"n":1}', b'{"n":2}']
    ids = [message_id for message_id, _body, _attempt in handled]
    assert len(set(ids)) == 3, f"each delivery got an id of its own: {ids}"
    assert all(message_id.startswith("amqp-") for message_id in ids)
    assert [attempt for _id, _body, attempt in handled] == [1, 1, 1], "handled once each"
    assert stats.handled == 3 and stats.duplicates == 0 and stats.dead_lettered == 0
    assert await queue_counts(amqp_url, f"{topic}.{group}") == (0, 0), "all acked"


async def test_a_foreign_message_with_message_id_is_still_deduplicated(amqp_url: str) -> None:
    """The other side of the same rule, through the same bare client: a ``message_id`` the
    producer did set is the id, so its duplicate is skipped (and acked)."""
    topic, group = f"rmq-withid-{unique_suffix()}", "g"
    bus = EventBus(amqp_url, dedup_store=MemoryDedupStore(), graceful_timeout=5)
    handled: list[str] = []

    @bus.subscribe(topic, group=group, dedup=True)
    async def handle(message: Message) -> None:
        handled.append(message.id)

    stats = bus.subscribers[0].stats
    async with bus:
        await raw_publish(
            amqp_url, exchange=topic, routing_key="", bodies=[b"{}", b"{}"], message_id="ext-1"
        )
        await wait_for(lambda: stats.handled + stats.duplicates >= 2, what="both deliveries")
        await anyio.sleep(0.5)

    assert handled == ["ext-1"]
    assert stats.handled == 1 and stats.duplicates == 1
    assert await queue_counts(amqp_url, f"{topic}.{group}") == (0, 0), "the duplicate is acked"
