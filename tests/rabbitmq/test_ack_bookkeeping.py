"""`ChannelAcks` against a fake channel (no broker): which ack frames it writes, and that its
bookkeeping stays bounded by what is unsettled however long one delivery stays unsettled."""

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pamqp.frame
from aiormq.abc import AbstractChannel, ChannelFrame
from eventbus_rabbitmq.acks import ChannelAcks
from pamqp.commands import Basic


@dataclass
class FakeConnection:
    write_queue: asyncio.Queue[ChannelFrame] = field(default_factory=asyncio.Queue)


@dataclass
class FakeChannel:
    """What ChannelAcks touches of an aiormq channel; nacks are recorded."""

    number: int = 1
    is_closed: bool = False
    connection: FakeConnection = field(default_factory=FakeConnection)
    nacked: list[int] = field(default_factory=list)

    async def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.nacked.append(tag)


def written(channel: FakeChannel) -> list[tuple[int, bool]]:
    """(delivery tag, multiple) of every ack frame written so far."""
    acks: list[tuple[int, bool]] = []
    while not channel.connection.write_queue.empty():
        data = channel.connection.write_queue.get_nowait().payload
        while data:
            used, _channel, frame = pamqp.frame.unmarshal(data)
            data = data[used:]
            assert isinstance(frame, Basic.Ack)
            acks.append((frame.delivery_tag, bool(frame.multiple)))
    return acks


def acks_on(channel: FakeChannel, batch: int) -> ChannelAcks:
    return ChannelAcks(cast(AbstractChannel, cast(Any, channel)), batch=batch)


async def test_one_stuck_delivery_keeps_the_bookkeeping_bounded() -> None:
    channel = FakeChannel()
    acks = acks_on(channel, batch=100)
    acks.delivered(1)  # stays unsettled throughout
    for tag in range(2, 100_002):
        acks.delivered(tag)
        acks.ack(tag)
    await acks.flush()
    assert acks.unsettled == 1, "settled tags are not kept behind the stuck one"
    frames = written(channel)
    assert all(not multiple for _tag, multiple in frames), "nothing may cover the stuck tag 1"
    assert sorted(tag for tag, _ in frames) == list(range(2, 100_002))

    acks.ack(1)
    await acks.flush()
    assert written(channel) == [(1, True)]  # covers only tag 1: all above are acked already
    assert acks.unsettled == 0


async def test_a_multiple_ack_stops_below_an_unsettled_or_held_tag() -> None:
    channel = FakeChannel()
    acks = acks_on(channel, batch=100)
    for tag in range(1, 9):
        acks.delivered(tag)
    for tag in (1, 2, 3):
        acks.ack(tag)
    await acks.release(4)  # sent at once
    acks.hold_releases()
    await acks.release(6)  # held: stays unsettled, requeued by the channel's close
    for tag in (5, 7, 8):
        acks.ack(tag)
    await acks.flush()
    assert channel.nacked == [4]
    assert written(channel) == [(5, True), (7, False), (8, False)]
    assert acks.unsettled == 1
