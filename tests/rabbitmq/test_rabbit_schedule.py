"""Scheduled publish on RabbitMQ, what only RabbitMQ does (DESIGN 11): which delay tier a
message waits in, and a topic nobody is bound to when the message falls due. The scenarios every
broker runs are in tests/brokers/test_schedule_on_brokers.py."""

from collections.abc import Callable

import anyio
import pytest

from eventbus import EventBus
from eventbus.message import Message
from eventbus.transports.scheduling import TIERS, tier_for

pytestmark = pytest.mark.amqp


def test_tiers_pick_the_largest_one_not_longer_than_the_delay_left() -> None:
    assert tier_for(0.5) is None
    assert tier_for(1) == 1
    assert tier_for(4.99) == 1
    assert tier_for(3600) == 3600
    assert tier_for(10 * 86400) == TIERS[-1]


@pytest.mark.parametrize("delay", [0.4, 1.1])
async def test_a_topic_nobody_is_bound_to_when_due_dead_letters_the_message(
    amqp_url: str, name: Callable[[str], str], delay: float
) -> None:
    """Publishing is accepted (it is checked when due); then nothing would receive it, so the
    forwarder keeps it in ``eventbus.scheduled.dlq`` instead of dropping it."""
    topic = name("sched-nobody")
    bus = EventBus(amqp_url)
    dead: list[Message] = []

    @bus.consume("eventbus.scheduled.dlq")
    async def on_dead(message: Message) -> None:
        dead.append(message)

    async with bus:
        message_id = await bus.publish(topic, "lonely", delay=delay)  # no UnroutableError now
        with anyio.fail_after(15):
            while not any(m.id == message_id for m in dead):  # noqa: ASYNC110
                await anyio.sleep(0.05)
    (mine,) = [m for m in dead if m.id == message_id]
    assert mine.headers["eventbus-dlq-reason"] == "unroutable"
    assert mine.headers["eventbus-schedule-name"] == topic, "where it was going, for a replay"
