"""Coalesced acks (acks.py) on a real broker: a ``multiple`` ack never covers an unsettled or
released delivery, acks above a gap are not held back, and nothing acked comes back after a
close or a lost channel once its ack was written."""

from collections.abc import Awaitable, Callable

import aiormq
import anyio
import pytest
from eventbus_rabbitmq import RabbitMQTransport
from eventbus_rabbitmq.acks import WINDOW
from eventbus_rabbitmq.subscription import RabbitSubscription
from rabbit_helpers import Consumer, next_or_none, nothing_more, take

from eventbus.message import Message
from eventbus.transports.base import Destination, RawDelivery, SubscriptionSpec

pytestmark = pytest.mark.amqp

Make = Callable[..., Awaitable[RabbitMQTransport]]
Subscribe = Callable[[RabbitMQTransport, SubscriptionSpec], Awaitable[Consumer]]


def msg(queue: str, i: int) -> Message:
    return Message(id=f"m{i}", topic=queue, body=str(i).encode())


def spec(queue: str, prefetch: int) -> SubscriptionSpec:
    return SubscriptionSpec(name=queue, kind="queue", group=None, prefetch=prefetch)


async def filled(transport: RabbitMQTransport, queue: str, count: int) -> None:
    messages = [msg(queue, i) for i in range(count)]
    await transport.publish(Destination(queue, kind="queue"), messages)


async def test_release_between_acks_is_redelivered_and_an_unsettled_gap_is_not_acked(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("acks-gap")
    await filled(transport, q, 10)
    sub = await subscribe(transport, spec(q, prefetch=50))  # batches of 5 acks
    got = await take(sub, 10)
    # m3 stays unsettled; m6 is released between acks recorded in the same turn, so a
    # coalesced ack(multiple=True) over them must neither swallow the release nor ack m3.
    for d in got[:3] + got[4:6]:
        await d.ack()
    await got[6].release()
    for d in got[7:]:
        await d.ack()
    (again,) = await take(sub, 1)
    assert (again.message.id, again.redelivered) == ("m6", True)
    await again.ack()
    assert await nothing_more(sub)
    await sub.close()  # m3 is requeued; every ack above went out before the close
    reopened = await subscribe(transport, spec(q, prefetch=50))
    (left,) = await take(reopened, 1)
    assert (left.message.id, left.redelivered) == ("m3", True)
    await left.ack()
    assert await nothing_more(reopened)


async def test_release_right_after_acks_of_lower_tags_is_redelivered(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("acks-release")
    await filled(transport, q, 8)
    sub = await subscribe(transport, spec(q, prefetch=100))  # batches of 10: all recorded
    first = await take(sub, 8)
    for d in first[:5]:
        await d.ack()  # recorded, not written yet
    await first[5].release()  # written at once, before the recorded acks
    for d in first[6:]:
        await d.ack()  # the coalesced ack(multiple=True) for m7 passes over m5's tag
    (again,) = await take(sub, 1)
    assert again.message.id == "m5"
    assert again.redelivered
    await again.ack()
    await sub.close()
    reopened = await subscribe(transport, spec(q, prefetch=100))
    assert await nothing_more(reopened)


async def test_acks_above_an_unsettled_delivery_free_prefetch_slots(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("acks-slots")
    await filled(transport, q, 30)
    sub = await subscribe(transport, spec(q, prefetch=20))
    first = await take(sub, 20)  # the prefetch window is full
    for d in first[1:]:
        await d.ack()  # m0 holds the lowest tag, unsettled
    # The broker sends more only once it got the acks above m0 (one by one, not multiple).
    more = await take(sub, 10, within=10)
    assert [d.message.id for d in more] == [f"m{i}" for i in range(20, 30)]
    for d in more:
        await d.ack()
    await first[0].ack()
    await sub.close()
    assert await transport.depth(q, "queue") == 0


async def test_a_lone_ack_below_the_batch_size_is_written_by_the_timer(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("acks-timer")
    await filled(transport, q, 101)
    sub = await subscribe(transport, spec(q, prefetch=100))  # batches of 10
    first = await take(sub, 100)
    await first[0].ack()  # one ack: only the timer sends it
    (late,) = await take(sub, 1, within=10)
    assert late.message.id == "m100"
    for d in [*first[1:], late]:
        await d.ack()
    await sub.close()
    assert await transport.depth(q, "queue") == 0


async def test_after_a_lost_channel_only_unsettled_deliveries_come_back(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("acks-lost")
    await filled(transport, q, 8)
    sub = await subscribe(transport, spec(q, prefetch=100))
    assert isinstance(sub.sub, RabbitSubscription)
    got = await take(sub, 8)
    for d in got[:3] + got[4:]:
        await d.ack()
    await anyio.sleep(WINDOW * 5)  # written by now
    channel = sub.sub.channel
    assert channel is not None
    # The broker closes the channel (404): like a lost channel, it requeues what is unacked.
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await channel.queue_declare(name("missing"), passive=True)
    (again,) = await take(sub, 1)  # the subscription resumes on a fresh channel
    assert (again.message.id, again.redelivered) == ("m3", True)
    await again.ack()
    assert await nothing_more(sub)


async def test_acks_recorded_when_the_channel_dies_are_redelivered_not_lost(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe
) -> None:
    transport = await make_transport()
    q = name("acks-unwritten")
    await filled(transport, q, 5)
    sub = await subscribe(transport, spec(q, prefetch=100))
    assert isinstance(sub.sub, RabbitSubscription)
    got = await take(sub, 5)
    channel = sub.sub.channel
    assert channel is not None
    for d in got[:4]:
        await d.ack()  # recorded; the channel may die before the timer writes them
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await channel.queue_declare(name("missing"), passive=True)
    # At-least-once: m4 certainly comes back; m0-m3 may too, if their acks died with the
    # channel (whether the timer wrote them first is a race), but nothing is lost.
    back: list[RawDelivery] = []
    while (d := await next_or_none(sub, quiet=1.0)) is not None:
        back.append(d)
        await d.ack()
    ids = [d.message.id for d in back]
    assert "m4" in ids
    assert set(ids) <= {"m0", "m1", "m2", "m3", "m4"}
    assert len(ids) == len(set(ids))
    assert all(d.redelivered for d in back)


async def test_acks_racing_a_close_never_break_the_channel(
    make_transport: Make,
    name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
    subscribe: Subscribe,
) -> None:
    """Handlers finishing while close() requeues what is unsettled: an ack written after that
    requeue would name a tag the broker no longer knows (406, the channel dies with an error).
    Settling after the requeue is a no-op instead; nothing acked before it comes back."""
    caplog.set_level("DEBUG", logger="eventbus.rabbitmq")
    transport = await make_transport()
    q = name("acks-close-race")
    await filled(transport, q, 40)
    sub = await subscribe(transport, spec(q, prefetch=100))
    got = await take(sub, 40)
    acked: list[str] = []

    async def settle_meanwhile() -> None:
        for d in got:
            await d.ack()
            acked.append(d.message.id)
            await anyio.sleep(0.0005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(settle_meanwhile)
        await anyio.sleep(0.002)
        await sub.close()
    assert not [r for r in caplog.records if "close failed" in r.getMessage()]
    reopened = await subscribe(transport, spec(q, prefetch=100))
    back: list[str] = []
    while (d := await next_or_none(reopened, quiet=1.0)) is not None:
        back.append(d.message.id)
        await d.ack()
    assert len(back) == len(set(back))
    # Nothing lost: every message was acked in time or comes back.
    assert set(back) | set(acked) == {f"m{i}" for i in range(40)}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_releases_after_stop_come_back_in_delivery_order(
    make_transport: Make, name: Callable[[str], str], subscribe: Subscribe, queue_type: str
) -> None:
    """The core releases what it did not finish while stopping, newest first; a quorum queue
    redelivers nacked messages in nack order. Held until the close, they come back in order."""
    transport = await make_transport(f"queue_type={queue_type}")
    q = name("acks-stop-order")
    await filled(transport, q, 6)
    sub = await subscribe(transport, spec(q, prefetch=10))
    got = await take(sub, 6)
    await got[0].ack()
    await sub.stop()
    for delivery in reversed(got[1:]):
        await delivery.release()
    await sub.close()
    reopened = await subscribe(transport, spec(q, prefetch=10))
    back = await take(reopened, 5)
    assert [d.message.id for d in back] == ["m1", "m2", "m3", "m4", "m5"]
    assert all(d.redelivered for d in back)
