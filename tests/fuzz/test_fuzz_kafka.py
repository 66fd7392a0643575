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
from collections.abc import Iterator
from typing import NamedTuple

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidTimestampError
from fuzz_harness import FIXED, Worker, running_worker
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.kafka


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


@pytest.fixture(params=[False, True], ids=["no-retry", "retried"])
def fuzzed(
    kafka_url: str, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> Iterator[tuple[Worker, AIOKafkaProducer]]:
    """The worker (without retries, or retrying odd orders), and a plain aiokafka producer in
    its event loop."""
    with running_worker(kafka_url, "records", capsys, retrying=request.param) as worker:
        producer = worker.portal.call(_producer, kafka_url)
        try:
            yield worker, producer
        finally:
            worker.portal.call(producer.stop)


async def _producer(kafka_url: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_url.split("://", 1)[1], max_request_size=2**20
    )
    await producer.start()
    return producer


# The bus's own event loop (another thread) uses `random` (backoff jitter, partitioners)
# while hypothesis draws; that does not touch what hypothesis draws.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(FIXED)
@given(batch=st.lists(foreign_records(), min_size=1, max_size=8))
def test_foreign_records_never_stop_the_worker(
    fuzzed: tuple[Worker, AIOKafkaProducer], batch: list[Record]
) -> None:
    worker, producer = fuzzed

    async def send() -> int:
        sent = 0
        for record in batch:
            try:
                await producer.send_and_wait(worker.queue, **record._asdict())
            except InvalidTimestampError:
                continue  # the broker refuses it (more than an hour ahead): never written
            sent += 1
        return sent

    worker.run_example(send)
    assert worker.settled == worker.published, "each handled or dead-lettered, once"
    assert worker.bus.ready, "the subscription runs on"
    # Dead letters only for what is not an order (or, retrying, an odd one): a reply-to that
    # is no address is dropped.
    reasons = {"undecodable", "retries-exhausted"} if worker.retrying else {"undecodable"}
    assert set(worker.bus.subscribers[0].stats.dead_letter_reasons) <= reasons
