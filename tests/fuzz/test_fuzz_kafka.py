"""Fuzzing (DESIGN 13) on Kafka: whatever a foreign producer writes -- any key and value,
header names of any text, header values of any bytes (non-UTF-8, huge, empty, null),
CloudEvents attributes and eventbus's own headers out of range -- the worker never stops, every
record is handled or dead-lettered, and ``eventbus dlq show`` prints every dead letter (checked
once all examples ran, on what they dead-lettered).

Property-based (hypothesis) with a fixed budget: ``FUZZ_EXAMPLES`` batches (default 150) of up
to 8 records, written with a plain aiokafka producer to one running bus; the example count is
printed. Not fuzzed: ``eventbus-target-group``, which addresses a record to one group of a
topic, so a record naming another group is by design not this one's to handle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pydantic
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidTimestampError
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import EventBus, RetryPolicy
from eventbus.testing.conformance import wait_for

pytestmark = pytest.mark.kafka

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


class Order(pydantic.BaseModel):
    id: int


class Record(NamedTuple):
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_ms: int | None


_OURS = [
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_specversion",
    "ce_time",
    "ce_correlationid",
    "ce_dataschema",
    "content-type",
    "eventbus-not-before",
    "eventbus-reply-to",
    "eventbus-attempt",
    "eventbus-key",
    "eventbus-dlq-reason",
    "traceparent",
    "tracestate",
]
_OUT_OF_RANGE = [
    b"",
    b"\xff\xfe\x00",
    b"1.0",
    b"99.9",
    b"-1",
    b"nan",
    b"inf",
    b"-inf",
    b"1e308",
    b"32503680000",  # year 3000: a due time no record may wait for
    b"0",
    b"9999-99-99T99:99:99Z",
    b"2026-13-01T00:00:00+25:00",
    b"00-00000000000000000000000000000000-0000000000000000-00",
    b"application/json; charset=latin-1",
    b"x" * 5000,
]
_HEADER_VALUES = (
    st.none()
    | st.binary(max_size=60)
    | st.text(max_size=60).map(str.encode)
    | st.sampled_from(_OUT_OF_RANGE)
    | st.integers().map(lambda n: str(n).encode())
    | st.floats().map(lambda f: repr(f).encode())
)
_NAMES = st.sampled_from(_OURS) | st.text(max_size=40)
_VALUES = (
    st.none()
    | st.binary(max_size=2048)
    | st.builds(lambda n: json.dumps({"id": n}).encode(), st.integers(-(10**12), 10**12))
    | st.builds(
        lambda v: json.dumps(v, default=str).encode(),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )
    | st.just(b"\xff" * 300_000)
)


@st.composite
def foreign_records(draw: st.DrawFn) -> Record:
    key = draw(st.none() | st.binary(max_size=40))
    value = draw(_VALUES)
    return Record(
        key=key,
        value=b"" if key is None and value is None else value,  # Kafka needs one of them
        headers=draw(st.lists(st.tuples(_NAMES, _HEADER_VALUES), max_size=6)),
        timestamp_ms=draw(st.none() | st.integers(0, 2**42)),
    )


class Fuzzed:
    """One bus for every example, running in a blocking portal's event loop: hypothesis drives
    the examples from a plain (synchronous) test."""

    def __init__(self, kafka_url: str, portal: BlockingPortal) -> None:
        self.url = kafka_url
        self.portal = portal
        self.queue = f"fuzz-{uuid.uuid4().hex[:10]}"
        self.bus = EventBus(kafka_url)
        self.handled: list[int] = []
        self.published = 0
        self.examples = 0
        self.producer: Any = None

        @self.bus.consume(self.queue, concurrency=8, retry=RetryPolicy(max_attempts=1))
        async def handle(order: Order) -> None:
            self.handled.append(order.id)

    @property
    def dead_lettered(self) -> int:
        return self.bus.subscribers[0].stats.dead_lettered

    @property
    def settled(self) -> int:
        stats = self.bus.subscribers[0].stats
        return stats.handled + stats.dead_lettered

    def publish(self, batch: list[Record]) -> None:
        """Write every record and wait for its acknowledgement, then until the worker settled
        everything so far."""

        async def run() -> None:
            for record in batch:
                try:
                    await self.producer.send_and_wait(self.queue, **record._asdict())
                except InvalidTimestampError:
                    continue  # the broker refuses it (more than an hour ahead): never sent
                self.published += 1
            await wait_for(lambda: self.settled >= self.published, within=30, what="settled")

        self.examples += 1
        self.portal.call(run)


@pytest.fixture
def fuzzed(kafka_url: str) -> Iterator[Fuzzed]:
    with start_blocking_portal() as portal:
        target = Fuzzed(kafka_url, portal)
        with portal.wrap_async_context_manager(target.bus):
            target.producer = portal.call(_producer, kafka_url)
            try:
                yield target
            finally:
                portal.call(target.producer.stop)
        print(
            f"\nfuzz: {target.examples} examples, {target.published} foreign records: "
            f"{len(target.handled)} handled, {target.dead_lettered} dead-lettered"
        )
        if target.dead_lettered:  # every one of them readable by the operator's tool
            shown = _dlq_show(target)
            assert shown.count("eventbus-dlq-reason") == target.dead_lettered, shown[-3000:]


async def _producer(kafka_url: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_url.split("://", 1)[1], max_request_size=2**20
    )
    await producer.start()
    return producer


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


# The bus's own event loop (another thread) uses `random` (backoff jitter, partitioners)
# while hypothesis draws; that does not touch what hypothesis draws.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(_FIXED, max_examples=EXAMPLES)
@given(batch=st.lists(foreign_records(), min_size=1, max_size=8))
def test_foreign_records_never_stop_the_worker(fuzzed: Fuzzed, batch: list[Record]) -> None:
    fuzzed.publish(batch)
    assert fuzzed.settled == fuzzed.published, "each handled or dead-lettered, once"
    # Dead letters only for what is not an order: a reply-to that is no address is dropped.
    assert set(fuzzed.bus.subscribers[0].stats.dead_letter_reasons) <= {"undecodable"}
    assert fuzzed.bus.ready, "the subscription runs on"
