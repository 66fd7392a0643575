"""Fixtures of the core's unit tests: every test gets a fresh in-memory broker of its own."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from eventbus import EventBus
from eventbus.testing import MemoryBroker, memory_broker


@pytest.fixture
def broker_name() -> str:
    return f"unit-{uuid.uuid4().hex}"


@pytest.fixture
def url(broker_name: str) -> str:
    """``memory://<unique>``: no other test (or concurrently running suite) shares it."""
    return f"memory://{broker_name}"


@pytest.fixture
def broker(broker_name: str) -> MemoryBroker:
    """The broker behind ``url``, for inspection (``published``, ``ready``)."""
    return memory_broker(broker_name)


@pytest.fixture
def make_bus(url: str) -> Callable[..., EventBus]:
    """Buses on this test's broker; two of them behave like two service instances."""

    def make(**options: Any) -> EventBus:
        options.setdefault("graceful_timeout", 10.0)
        return EventBus(url, **options)

    return make
