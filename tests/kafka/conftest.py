"""Kafka adapter tests: a connected transport per test and unique names.

Tests that need a broker use the session fixture ``kafka_url`` (tests/conftest.py) and are
marked ``kafka``; the pure ones (URL, wire format, offsets, murmur2 vectors) need nothing.
Helpers for consuming live in ``kafka_helpers.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from eventbus_kafka import KafkaTransport


@pytest.fixture
def name() -> Callable[[str], str]:
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"kt-{base}-{suffix}"


@pytest.fixture
async def transport(kafka_url: str) -> AsyncIterator[KafkaTransport]:
    t = KafkaTransport(kafka_url)
    await t.connect()
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
def open_transport(kafka_url: str) -> Callable[..., KafkaTransport]:
    """Extra transports (other "processes"); close them in the test."""

    def make(options: str = "") -> KafkaTransport:
        return KafkaTransport(kafka_url + (f"?{options}" if options else ""))

    return make
