"""A dead-letter or retry publish the broker refuses never re-runs the handler: only the
publish is retried, with capped backoff, until it goes through (DESIGN 8, "Dead letters always
get out"). The unit tests check this on the memory transport; here RabbitMQ itself refuses:
a policy (``max-length`` 0, ``reject-publish``) on the target queue makes it nack every
publish to it until the policy is cleared."""

from __future__ import annotations

import contextlib
import re

import anyio
import pytest
from rabbit_helpers import (
    clear_policy,
    drain,
    queue_counts,
    set_policy,
    unique_suffix,
    with_options,
)

from eventbus import Delivery, EventBus, Message, Reject, RetryPolicy
from eventbus import headers as h
from eventbus.testing.conformance import wait_for

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(180)]

REFUSE_ALL = '{"max-length":0,"overflow":"reject-publish"}'


@pytest.mark.parametrize("rejected", [False, True], ids=["retries-exhausted", "rejected"])
async def test_a_refused_dead_letter_is_published_again_without_rerunning_the_handler(
    amqp_url: str, rejected: bool
) -> None:
    suffix = unique_suffix()
    topic, group = f"rmq-dlqrefused-{suffix}", "g"
    dlq = f"{topic}.{group}.dlq"
    policy = f"rmq-dlqrefused-{suffix}"
    bus = EventBus(amqp_url, graceful_timeout=5)
    calls: list[tuple[str, int]] = []

    @bus.subscribe(topic, group=group, retry=RetryPolicy(max_attempts=1))
    async def handle(message: Message, delivery: Delivery) -> None:
        calls.append((message.id, delivery.attempt))
        if rejected:
            raise Reject("not for us")
        raise ValueError("always")

    stats = bus.subscribers[0].stats
    # Matches the DLQ only, declared (by the bus) after the policy: it applies from the start.
    await anyio.to_thread.run_sync(set_policy, policy, f"^{re.escape(dlq)}$", REFUSE_ALL)
    try:
        async with bus:
            await bus.publish(topic, b"{}", message_id="poison-1", headers={"tenant": "t1"})
            await wait_for(lambda: stats.republish_failures >= 2, what="refused publishes")
            assert (await queue_counts(amqp_url, dlq))[0] == 0, "the broker refused them"
            assert stats.dead_lettered == 0
            await anyio.to_thread.run_sync(clear_policy, policy)
            await wait_for(lambda: stats.dead_lettered == 1, within=30, what="the dead letter")
            await anyio.sleep(0.5)  # nothing more comes
    finally:
        await anyio.to_thread.run_sync(clear_policy_quietly, policy)

    assert calls == [("poison-1", 1)], "the handler ran once: only the publish was retried"
    assert stats.failed_attempts == 1 and stats.handled == 0
    assert stats.republish_failures >= 2 and stats.dead_lettered == 1
    assert await queue_counts(amqp_url, f"{topic}.{group}") == (0, 0), "acked, none unacked"
    [letter] = await drain(amqp_url, dlq)
    assert letter.header.properties.message_id == "poison-1"
    letter_headers = letter.header.properties.headers or {}
    assert letter_headers[h.DLQ_REASON] == ("rejected" if rejected else "retries-exhausted")
    assert letter_headers[h.ATTEMPTS] == "1"
    assert letter_headers[h.ORIGINAL_TOPIC] == topic
    assert letter_headers[h.ORIGINAL_GROUP] == group
    assert letter_headers["tenant"] == "t1", "the original headers are kept"
    assert letter.body == b"{}"


async def test_a_refused_retry_through_a_delay_queue_is_published_again_not_rerun(
    amqp_url: str,
) -> None:
    """``via_broker`` retries go through ``eventbus.delay.<bucket>[.<exchange>]``. For a plain
    group the exchange is the default one, so the delay queue is shared by every test on the
    broker and must not be blocked; a partitioned group's retries target its own exchange
    ``<topic>.<group>``, so its delay queue name is unique to this test."""
    suffix = unique_suffix()
    topic, group = f"rmq-retryrefused-{suffix}", "g"
    dlq = f"{topic}.{group}.dlq"
    policy = f"rmq-retryrefused-{suffix}"
    url = with_options(amqp_url, "partitions=2")
    bus = EventBus(url, graceful_timeout=5)
    calls: list[tuple[str, int]] = []
    retry = RetryPolicy(max_attempts=2, initial_delay=0.3, jitter=False, via_broker=True)

    @bus.subscribe(topic, group=group, retry=retry)
    async def handle(message: Message, delivery: Delivery) -> None:
        calls.append((message.id, delivery.attempt))
        raise ValueError("always")

    stats = bus.subscribers[0].stats
    delay_pattern = rf"^eventbus\.delay\.(quorum\.)?[0-9]+\.{re.escape(f'{topic}.{group}')}$"
    await anyio.to_thread.run_sync(set_policy, policy, delay_pattern, REFUSE_ALL)
    try:
        async with bus:
            await bus.publish(topic, b"{}", message_id="flaky-1", key="k1")
            await wait_for(lambda: stats.republish_failures >= 2, what="refused retry publishes")
            assert calls == [("flaky-1", 1)], "no second attempt while the retry is refused"
            await anyio.to_thread.run_sync(clear_policy, policy)
            await wait_for(lambda: stats.dead_lettered == 1, within=30, what="the dead letter")
            await anyio.sleep(0.5)
    finally:
        await anyio.to_thread.run_sync(clear_policy_quietly, policy)

    assert calls == [("flaky-1", 1), ("flaky-1", 2)], "each attempt ran exactly once"
    assert stats.failed_attempts == 2 and stats.redelivered == 1
    assert stats.republish_failures >= 2 and stats.dead_lettered == 1
    for i in range(2):
        assert await queue_counts(amqp_url, f"{topic}.{group}.{i}") == (0, 0)
    [letter] = await drain(amqp_url, dlq)
    assert letter.header.properties.message_id == "flaky-1"
    letter_headers = letter.header.properties.headers or {}
    assert letter_headers[h.DLQ_REASON] == "retries-exhausted"
    assert letter_headers[h.ATTEMPTS] == "2"


def clear_policy_quietly(name: str) -> None:
    """Cleanup: the policy may already be gone."""
    with contextlib.suppress(Exception):  # the test already has its verdict
        clear_policy(name)
