"""The conformance suite on the in-memory transport."""

import pytest

from eventbus.testing.conformance import ConformanceSuite


class TestMemoryConformance(ConformanceSuite):
    settle_time = 0.2

    @pytest.fixture
    def bus_url(self) -> str:
        return "memory://conformance"
