"""Fuzzing (DESIGN 13): whatever a foreign AMQP producer sends -- any body, header names and
values of every AMQP type, eventbus's own header names with nonsense in them, odd properties --
the worker never stops, every message is handled or dead-lettered, and ``eventbus dlq show``
prints every dead letter (checked once all examples ran, on what they dead-lettered).

Property-based (hypothesis) with a fixed budget: ``FUZZ_EXAMPLES`` batches (default 150) of up
to 8 messages, published with aio-pika to one running bus; the example count is printed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import pydantic
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import EventBus, RetryPolicy
from eventbus.testing.conformance import wait_for

pytestmark = pytest.mark.amqp

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


class Order(pydantic.BaseModel):
    id: int


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


class Fuzzed:
    """One bus for every example, running in a blocking portal's event loop: hypothesis drives
    the examples from a plain (synchronous) test."""

    def __init__(self, amqp_url: str, portal: BlockingPortal) -> None:
        self.url = amqp_url
        self.portal = portal
        self.queue = f"fuzz-{uuid.uuid4().hex[:10]}"
        self.bus = EventBus(amqp_url)
        self.handled: list[int] = []
        self.published = 0
        self.examples = 0
        self.channel: Any = None

        @self.bus.consume(self.queue, concurrency=8, retry=RetryPolicy(max_attempts=1))
        async def handle(order: Order) -> None:
            self.handled.append(order.id)

    @property
    def dead_lettered(self) -> int:
        return self.bus.subscribers[0].stats.dead_lettered

    @property
    def settled(self) -> int:
        return len(self.handled) + self.dead_lettered

    def publish(self, batch: list[aio_pika.Message]) -> None:
        """Publish with confirms, then wait until the worker settled everything so far."""

        async def run() -> None:
            for message in batch:
                try:
                    await self.channel.default_exchange.publish(message, routing_key=self.queue)
                except (TypeError, OverflowError, ValueError):
                    continue  # aio-pika cannot encode it (bytes in a table, a huge float)
                self.published += 1
            await wait_for(lambda: self.settled >= self.published, within=30, what="settled")

        self.examples += 1
        self.portal.call(run)


@pytest.fixture
def fuzzed(amqp_url: str) -> Iterator[Fuzzed]:
    with start_blocking_portal() as portal:
        target = Fuzzed(amqp_url, portal)
        with portal.wrap_async_context_manager(target.bus):
            connection = portal.call(aio_pika.connect, amqp_url)
            target.channel = portal.call(connection.channel)
            try:
                yield target
            finally:
                portal.call(connection.close)
        print(
            f"\nfuzz: {target.examples} examples, {target.published} foreign messages: "
            f"{len(target.handled)} handled, {target.dead_lettered} dead-lettered"
        )
        if target.dead_lettered:  # every one of them readable by the operator's tool
            shown = _dlq_show(target)
            assert shown.count("eventbus-dlq-reason") == target.dead_lettered, shown[-3000:]


def _dlq_show(target: Fuzzed) -> str:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "eventbus", "dlq", "show", f"{target.queue}.dlq"),
            *("--url", target.url, "--limit", str(target.dead_lettered + 10)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


_FIXED = settings(
    database=None,
    deadline=None,
    derandomize=True,  # the same examples in every run: a CI failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(_FIXED, max_examples=EXAMPLES)
@given(batch=st.lists(foreign_messages(), min_size=1, max_size=8))
def test_foreign_messages_never_stop_the_worker(
    fuzzed: Fuzzed, batch: list[aio_pika.Message]
) -> None:
    fuzzed.publish(batch)
    assert fuzzed.settled == fuzzed.published, "each handled or dead-lettered, once"
    assert fuzzed.bus.ready, "the subscription runs on"
