"""A broker that keeps the connection up but stops answering (just after a restart, say) must
not hang anything without a word. A publish fails within ``publish_timeout``, whichever step it
waits in: declaring its destination as well as the publisher confirm. A subscription restoring
its channel gives up each unanswered try after ``publish_timeout``, says so, and consumes again
once the broker answers. Either wait left unbounded would hang whoever publishes (a handler's
retry, the scheduled-message forwarder) or the subscription, holding its messages."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import aiormq
import anyio
import pytest
from cutting_proxy import CuttingProxy
from rabbit_helpers import queue_counts, through, unique_suffix, with_options
from raw_amqp import raw_publish

from eventbus import BrokerUnavailableError, EventBus, Message
from eventbus.testing.conformance import wait_for

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(120)]


def proxy_to(url: str) -> CuttingProxy:
    parts = urlsplit(url)
    return CuttingProxy(parts.hostname or "127.0.0.1", parts.port or 5672, cut_after=600)


async def test_a_declaration_the_broker_never_answers_fails_the_publish(amqp_url: str) -> None:
    proxy: CuttingProxy | None = proxy_to(amqp_url)
    assert proxy is not None
    await proxy.start()
    suffix = unique_suffix()
    url = with_options(through(amqp_url, proxy.port), "publish_timeout=1.5")
    bus = EventBus(url, graceful_timeout=1)
    try:
        async with bus.publisher():
            await bus.send(f"rmq-unanswered-a-{suffix}", "declared and confirmed")
            proxy.freeze()
            # A queue not declared yet: the publish first waits for queue.declare-ok.
            with anyio.fail_after(20), pytest.raises(BrokerUnavailableError) as raised:
                await bus.send(f"rmq-unanswered-b-{suffix}", "never answered")
            assert "no answer opening a channel or declaring" in str(raised.value)
            assert f"rmq-unanswered-b-{suffix}" in str(raised.value)
            await proxy.close()  # the bus's own stop must not wait for the frozen broker
            proxy = None
    finally:
        if proxy is not None:
            await proxy.close()


async def test_a_restore_the_broker_never_answers_is_retried_and_consumes_again(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The queue is deleted behind the subscription's back: RabbitMQ cancels its consumer and
    the subscription restores its channel, declaring the queue again. Meanwhile the proxy
    passes nothing from the bus to the broker (the broker's heartbeats still arrive, so the
    connection looks alive). Each try is given up after ``publish_timeout`` with a warning;
    once the proxy lets requests through, the subscription consumes again."""
    proxy = proxy_to(amqp_url)
    await proxy.start()
    queue = f"rmq-unanswered-sub-{unique_suffix()}"
    handled: list[str] = []
    url = with_options(through(amqp_url, proxy.port), "publish_timeout=1.5")
    bus = EventBus(url, graceful_timeout=1)

    @bus.consume(queue)
    async def on_job(message: Message) -> None:
        handled.append(message.id)

    caplog.set_level(logging.WARNING, logger="eventbus.rabbitmq")
    try:
        async with bus:
            await bus.send(queue, "before", message_id="before")
            await wait_for(lambda: handled == ["before"], within=15)
            proxy.freeze_requests()
            connection = await aiormq.connect(amqp_url)
            try:
                channel = await connection.channel()
                await channel.queue_delete(queue)
            finally:
                await connection.close()
            await wait_for(
                lambda: "did not answer within 1.5 s while subscribing to" in caplog.text,
                within=40,
            )
            proxy.thaw()
            await wait_for_queue(amqp_url, queue)
            # Published straight to the broker: the bus's own publisher may be mid-recovery.
            await raw_publish(
                amqp_url, exchange="", routing_key=queue, bodies=[b'"after"'], message_id="after"
            )
            await wait_for(lambda: "after" in handled, within=60)
    finally:
        await proxy.close()
    assert handled == ["before", "after"]


async def wait_for_queue(url: str, queue: str) -> None:
    """Until the restored subscription declared ``queue`` again."""
    with anyio.fail_after(60):
        while True:
            try:
                await queue_counts(url, queue)
                return
            except aiormq.exceptions.ChannelNotFoundEntity:
                await anyio.sleep(0.2)


async def test_a_rebalancing_tick_the_broker_never_answers_gives_its_channel_up(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A partitioned group's balancer asks the broker every tick, holding the subscription's
    lock. With the broker silent, the tick is given up after ``publish_timeout`` together
    with its channel (a cancelled call leaves it half-closed), so the watcher restores a fresh
    one once the broker answers, and the group consumes again."""
    proxy = proxy_to(amqp_url)
    await proxy.start()
    topic = f"rmq-unanswered-parts-{unique_suffix()}"
    handled: list[str] = []
    url = with_options(through(amqp_url, proxy.port), "publish_timeout=1.5&partitions=2")
    bus = EventBus(url, graceful_timeout=1)

    @bus.subscribe(topic, group="g")
    async def on_event(message: Message) -> None:
        handled.append(message.id)

    caplog.set_level(logging.WARNING, logger="eventbus.rabbitmq")
    try:
        async with bus:
            await bus.publish(topic, "before", key="a", message_id="before")
            await wait_for(lambda: handled == ["before"], within=30)
            proxy.freeze_requests()
            await wait_for(
                lambda: "did not answer within 1.5 s while rebalancing subscription" in caplog.text,
                within=30,
            )
            proxy.thaw()
            await raw_publish(
                amqp_url, exchange=topic, routing_key="a", bodies=[b'"after"'], message_id="after"
            )
            await wait_for(lambda: "after" in handled, within=60)
    finally:
        await proxy.close()
    assert handled == ["before", "after"]
