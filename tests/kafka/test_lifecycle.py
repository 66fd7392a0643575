"""`Subscription.run` in the caller's task group: join errors come out of ``start`` as
themselves, ``close`` ends ``run``, and a crash of the fetch loop ends ``run`` with the
translated error instead of hiding until shutdown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from aiokafka.errors import TopicAuthorizationFailedError  # type: ignore[import-untyped]
from eventbus_kafka import KafkaTransport
from eventbus_kafka.subscription import KafkaSubscription
from eventbus_kafka.url import parse_url
from kafka_helpers import RecordingOwner, group_of, messages, subscribe, take, wait_until

from eventbus.errors import AuthorizationError, BrokerUnavailableError
from eventbus.transports.base import Destination, SubscriptionSpec

Name = Callable[[str], str]


async def test_a_join_that_cannot_complete_raises_from_start_before_live() -> None:
    settings = parse_url("kafka://127.0.0.1:1?join_timeout=1")
    sub = KafkaSubscription(
        settings,
        SubscriptionSpec("orders", "topic", "billing", 10),
        RecordingOwner(),
        topics=["orders"],
        group="billing",
        admin=None,  # type: ignore[arg-type]  # only a broadcast asks it for partitions
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1:1\b"):
                await tasks.start(sub.run)
    assert sub._consumer is None, "the half-started consumer was stopped"
    await sub.close()


@pytest.mark.kafka
async def test_a_join_past_join_timeout_raises_from_start_naming_it(
    open_transport: Callable[..., KafkaTransport], name: Name
) -> None:
    transport = open_transport("join_timeout=0.001")
    await transport.connect()
    try:
        topic = name("slowjoin")
        with pytest.raises(BrokerUnavailableError, match=r"join_timeout=0\.001s"):
            await subscribe(transport, SubscriptionSpec(topic, "topic", group_of(topic), 10))
    finally:
        await transport.close()


@pytest.mark.kafka
async def test_close_ends_run_and_later_settles_do_nothing(
    transport: KafkaTransport, name: Name
) -> None:
    topic = name("close")
    live = await subscribe(transport, SubscriptionSpec(topic, "topic", group_of(topic), 10))
    await transport.publish(Destination(topic), messages(topic, 3, key=lambda i: "k"))
    got = await take(live, 3)
    await got[0].ack()
    with anyio.fail_after(30):
        await live.close()  # returns once run returned
    assert not live.running
    for d in got[1:]:
        await d.ack()  # after close: no-ops, redelivered to the next consumer
    offsets = await transport._admin.group_offsets(group_of(topic))
    assert [o for (t, _), (o, _) in offsets.items() if t == topic and o > 0] == [1]


@pytest.mark.kafka
async def test_a_fetch_loop_that_cannot_go_on_ends_run_with_the_access_error(
    transport: KafkaTransport, name: Name
) -> None:
    topic = name("crash")
    live = await subscribe(transport, SubscriptionSpec(topic, "topic", group_of(topic), 10))
    await transport.publish(Destination(topic), messages(topic, 2, key=lambda i: "k"))
    got = await take(live, 2)
    sub: Any = live.sub

    async def refused(**_: Any) -> Any:
        raise TopicAuthorizationFailedError()

    sub._consumer.getmany = refused  # the broker starts refusing (ACLs changed)
    await wait_until(lambda: not live.running, within=30)
    # Reported lost before the consumer left the group: the core stops its handlers first.
    assert [[d.message.id for d in call] for call in live.owner.lost_calls] == [["m0", "m1"]]
    with pytest.raises(AuthorizationError, match="TopicAuthorizationFailedError"):
        await live.close()  # re-raises what ended run
    with pytest.raises(AuthorizationError):
        await anext(live)  # the iterator says so too
    await got[0].ack()  # no-op: the new owner gets both again
    again = await subscribe(transport, SubscriptionSpec(topic, "topic", group_of(topic), 10))
    assert [d.message.id for d in await take(again, 2)] == ["m0", "m1"]
    await again.close()
