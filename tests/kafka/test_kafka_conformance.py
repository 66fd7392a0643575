"""The transport conformance suite (DESIGN 6) against a real Kafka broker."""

import pytest

from eventbus.testing.conformance import ConformanceSuite

pytestmark = pytest.mark.kafka


class TestKafkaConformance(ConformanceSuite):
    @pytest.fixture
    def bus_url(self, kafka_url: str) -> str:
        return kafka_url
