"""Tests that run the same scenario on real Kafka and real RabbitMQ: a test that takes the
``broker`` fixture runs once per broker (``kafka``, ``rabbitmq``), with ``url`` its address and
``name`` giving names unique to the test."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

ON = {"kafka": "kafka_url", "rabbitmq": "amqp_url"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker" in metafunc.fixturenames:
        metafunc.parametrize(
            "broker",
            [
                pytest.param("kafka", marks=pytest.mark.kafka),
                pytest.param("rabbitmq", marks=pytest.mark.amqp),
            ],
        )


@pytest.fixture
def url(broker: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(ON[broker]))


@pytest.fixture
def name(broker: str) -> Callable[[str], str]:
    suffix = uuid.uuid4().hex[:10]
    return lambda base: f"{broker[:3]}-{base}-{suffix}"
