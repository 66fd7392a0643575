"""The circuit breaker's acceptance test on real Kafka (DESIGN 11): an outage of the handler's
dependency dead-letters nothing with a breaker, and fills the dead-letter topic without one
(tests/breaker_scenario.py)."""

from __future__ import annotations

import pytest
from breaker_scenario import check, with_and_without

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def test_an_outage_dead_letters_nothing_with_the_breaker(kafka_url: str) -> None:
    on, off = await with_and_without(kafka_url, "kt-breaker")
    check(on, off)
