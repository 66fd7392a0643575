"""A delivery the AMQP client library itself cannot read (DESIGN 8, issue "poison below the
core"): a foreign producer's out-of-range ``timestamp``. It used to break aiormq's frame reader,
dropping the shared connection, which reconnected in a tight loop with the message back at the
head of its queue. Now it is dead-lettered with what could be recovered, and the other
subscriptions on the connection never notice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import aiormq
import pydantic
import pytest
from eventbus_rabbitmq import frames
from pamqp import decode
from pamqp.commands import Basic

from eventbus import EventBus, Message
from eventbus import headers as h
from eventbus.testing.conformance import wait_for

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(120)]


class FarFuture(datetime):
    """What another client can put on the wire: 2**62 (as pamqp reads 64-bit timestamps,
    milliseconds above 2**32: some 146 million years, far past what datetime can hold)."""

    def timestamp(self) -> float:
        return float(2**62)


FAR_FUTURE = FarFuture(2000, 1, 1, tzinfo=UTC)


class Job(pydantic.BaseModel):
    id: int


def test_an_out_of_range_timestamp_decodes_to_the_unreadable_marker() -> None:
    encoded = decode.common.Struct.timestamp.pack(2**62)
    assert decode.by_type(encoded, "timestamp") == (8, frames.UNREADABLE)
    fine = decode.common.Struct.timestamp.pack(1_700_000_000)
    assert decode.by_type(fine, "timestamp")[1].year == 2023, "values in range are unchanged"


async def test_a_frame_the_client_cannot_read_is_dead_lettered_and_nothing_else_notices(
    amqp_url: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    poisoned, healthy = f"frames-bad-{suffix}", f"frames-ok-{suffix}"
    bus = EventBus(amqp_url)
    handled: list[tuple[str, int]] = []
    letters: list[Message] = []

    @bus.consume(poisoned)
    async def on_bad(job: Job) -> None:
        handled.append((poisoned, job.id))

    @bus.consume(healthy)
    async def on_ok(job: Job) -> None:
        handled.append((healthy, job.id))

    @bus.consume(f"{poisoned}.dlq")
    async def dlq(message: Message) -> None:
        letters.append(message)

    async with bus:
        connection = await aiormq.connect(amqp_url)
        try:
            channel = await connection.channel()
            await channel.basic_publish(
                b'{"id": 1}',
                routing_key=poisoned,
                properties=Basic.Properties(
                    message_id="poison-1", timestamp=FAR_FUTURE, content_type="application/json"
                ),
            )
        finally:
            await connection.close()
        await bus.send(poisoned, Job(id=2))  # the queue goes on after it
        for i in range(5):
            await bus.send(healthy, Job(id=i))  # and so does the other subscription
        await wait_for(lambda: len(letters) == 1 and len(handled) == 6, within=60)
        assert all(s.stats.restarts == 0 for s in bus.subscribers), "no reconnect loop"
    assert sorted(handled) == sorted([(poisoned, 2)] + [(healthy, i) for i in range(5)])
    [letter] = letters
    assert letter.id == "poison-1" and letter.body == b'{"id": 1}'
    assert letter.headers[h.DLQ_REASON] == "undecodable"
    assert letter.headers[h.ERROR_TYPE].endswith("DeliveryDefectError")
    assert "timestamp" in letter.headers[h.ERROR_MESSAGE]
