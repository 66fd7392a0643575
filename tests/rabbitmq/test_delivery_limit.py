"""A quorum queue's delivery limit never drops a message silently (issue: hardening, ids and
duplicates): at its last allowed delivery the message is dead-lettered by eventbus, with its
headers, before RabbitMQ would drop it."""

from __future__ import annotations

import uuid

import anyio
import pydantic
import pytest
from rabbit_helpers import with_options

from eventbus import EventBus, Message
from eventbus import headers as h
from eventbus.testing.conformance import wait_for

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(120)]


class Job(pydantic.BaseModel):
    id: int


async def test_the_last_allowed_delivery_is_dead_lettered_not_dropped(amqp_url: str) -> None:
    queue = f"rmq-limit-{uuid.uuid4().hex[:8]}"
    url = with_options(amqp_url, "queue_type=quorum&delivery_limit=1")
    started: list[int] = []
    letters: list[Message] = []

    def build() -> EventBus:
        bus = EventBus(url, graceful_timeout=0.2)

        @bus.consume(queue)
        async def stuck(job: Job) -> None:
            started.append(job.id)
            await anyio.sleep_forever()  # cancelled at shutdown: released, returned once

        @bus.consume(f"{queue}.dlq")
        async def dlq(message: Message) -> None:
            letters.append(message)

        return bus

    first = build()
    async with first:
        await first.send(queue, Job(id=1), message_id="job-1", headers={"tenant": "a"})
        await wait_for(lambda: started == [1])
    # Returned once: the limit (1) drops it on the next return, so this delivery is its last.
    second = build()
    async with second:
        await wait_for(lambda: len(letters) == 1, within=60)
    assert started == [1], "not handled again at its last allowed delivery"
    [letter] = letters
    assert letter.id == "job-1" and letter.headers["tenant"] == "a"
    assert letter.headers[h.DLQ_REASON] == "undecodable"
    assert "delivery limit (1)" in letter.headers[h.ERROR_MESSAGE]
