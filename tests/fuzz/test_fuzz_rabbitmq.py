"""Fuzzing (DESIGN 13): whatever a foreign AMQP producer sends -- any body, header names and
values of every AMQP type, eventbus's own header names with nonsense in them, odd properties --
the worker never stops, every message is handled or dead-lettered, and ``eventbus dlq show``
prints every dead letter (checked once all examples ran, on what they dead-lettered).

Property-based (hypothesis) with a fixed budget: ``FUZZ_EXAMPLES`` batches (default 150) of up
to 8 messages, published with aio-pika to one running bus; the example count is printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import aio_pika
import aiormq
import pytest
from fuzz_harness import FIXED, Worker, running_worker
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.amqp

_OURS = [
    "eventbus-attempt",
    "eventbus-expires-at",
    "eventbus-key",
    "eventbus-causation-id",
    "eventbus-dlq-reason",
    "cloudEvents_id",
    "cloudEvents_time",
    "cloudEvents_specversion",
    "cloudEvents_type",
    "cloudEvents_correlationid",
    "cloudEvents_dataschema",
    "x-death",
    "x-delivery-count",
    "traceparent",
]
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=60)
    | st.binary(max_size=60)
    | st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False)
    | st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1))
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_NAMES = st.sampled_from(_OURS) | st.text(min_size=1, max_size=40)
_BODIES = (
    st.binary(max_size=2048)
    | st.builds(lambda n: json.dumps({"id": n}).encode(), st.integers(-(10**12), 10**12))
    | st.builds(
        lambda v: json.dumps(v, default=str).encode(),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )
    | st.just(b"\xff" * 70_000)
)


@st.composite
def foreign_messages(draw: st.DrawFn) -> aio_pika.Message:
    headers = draw(st.dictionaries(_NAMES, _VALUES, max_size=6))
    return aio_pika.Message(
        draw(_BODIES),
        headers=headers,
        content_type=draw(
            st.none()
            | st.sampled_from(["application/json", "text/plain", "x/y"])
            | st.text(max_size=20)
        ),
        message_id=draw(st.none() | st.text(max_size=80)),
        correlation_id=draw(st.none() | st.text(max_size=80)),
        type=draw(st.none() | st.text(max_size=40)),
        timestamp=draw(
            st.none()
            | st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2100, 1, 1))
        ),
    )


class ForeignPublisher:
    """An aio-pika channel (with confirms) in the worker's event loop, opened again when the
    broker closed the connection over a message it cannot parse itself (RabbitMQ 3.10 crashes
    the channel on a float inside an array header, and closes the connection)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.connection: Any = None
        self.channel: Any = None
        self.refused = 0

    async def open(self) -> None:
        self.connection = await aio_pika.connect(self.worker.url)
        self.channel = await self.connection.channel()

    async def publish(self, message: aio_pika.Message) -> bool:
        """Publish ``message``; False when it never reached a queue."""
        if self.connection.is_closed or self.channel.is_closed:
            await self.close()
            await self.open()
        try:
            await self.channel.default_exchange.publish(message, routing_key=self.worker.queue)
        except (TypeError, OverflowError, ValueError):
            return False  # aio-pika cannot encode it (bytes in a table, a huge float)
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError):
            # The broker closed the channel or the connection over it: not in the queue.
            self.refused += 1
            await self.close()
            return False
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.close()


@pytest.fixture(params=[False, True], ids=["no-retry", "retried"])
def fuzzed(
    amqp_url: str, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> Iterator[tuple[Worker, ForeignPublisher]]:
    """The worker (without retries, or retrying odd orders), and a foreign publisher."""
    with running_worker(amqp_url, "messages", capsys, retrying=request.param) as worker:
        publisher = ForeignPublisher(worker)
        worker.portal.call(publisher.open)
        try:
            yield worker, publisher
        finally:
            worker.portal.call(publisher.close)
            with capsys.disabled():
                print(f"\nfuzz: {publisher.refused} messages the broker itself refused")


@settings(FIXED)
@given(batch=st.lists(foreign_messages(), min_size=1, max_size=8))
def test_foreign_messages_never_stop_the_worker(
    fuzzed: tuple[Worker, ForeignPublisher], batch: list[aio_pika.Message]
) -> None:
    worker, publisher = fuzzed

    async def send() -> int:
        return sum([await publisher.publish(message) for message in batch])

    worker.run_example(send)
    assert worker.settled == worker.published, "each handled or dead-lettered, once"
    assert worker.bus.ready, "the subscription runs on"
