"""RabbitMQ's real ceiling on this machine: a lean consumer on aiormq (the AMQP client the
eventbus adapter and aio-pika both sit on) with no framework at all.

Prefetch on the channel, a ``basic_consume`` callback that runs the no-op handler, and acks
batched with ``multiple=True``: one ack frame covers every delivery handled so far, sent once
per ``ACK_EVERY`` deliveries (a quarter of the prefetch, so the broker never runs dry). Still
at-least-once: a delivery is acked only after its handler ran, and an ack with ``multiple``
covers only delivery tags up to the one given, all of them handled (one channel, in order).
"""

from __future__ import annotations

from typing import Any

import aiormq

from benchmarks.contenders.common import Tally
from benchmarks.harness import Measurement, Run
from benchmarks.rabbit_common import filled_queue

__all__ = ["consume"]


async def _noop(body: bytes) -> None:
    pass


async def consume(run: Run) -> Measurement:
    settings = run.settings
    queue_name = run.name("in")
    tally = Tally(run.messages, settings.max_seconds)
    ack_every = max(1, settings.prefetch // 4)
    handled = 0

    async with filled_queue(settings, queue_name, run.messages):
        connection = await aiormq.connect(settings.amqp_url)
        try:
            channel = await connection.channel()
            await channel.basic_qos(prefetch_count=settings.prefetch)

            async def on_message(message: Any) -> None:
                nonlocal handled
                await _noop(message.body)
                tally.hit()
                handled += 1
                if handled % ack_every == 0:
                    await channel.basic_ack(message.delivery.delivery_tag, multiple=True)

            await channel.basic_consume(queue_name, on_message, no_ack=False)
            return await tally.wait("aiormq consume")
        finally:
            await connection.close()
