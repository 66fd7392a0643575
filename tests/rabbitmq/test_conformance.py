"""The transport conformance suite (DESIGN 6) against a real RabbitMQ, classic and quorum queues."""

from collections.abc import Callable

import pytest
from rabbit_helpers import unique_suffix

from eventbus.testing.conformance import ConformanceSuite

pytestmark = pytest.mark.amqp


class TestRabbitConformance(ConformanceSuite):
    @pytest.fixture(
        params=["queue_type=classic", "queue_type=quorum", "queue_type=quorum&partitions=3"],
        ids=["classic", "quorum", "quorum-partitioned"],
    )
    def bus_url(self, request: pytest.FixtureRequest, amqp_url: str) -> str:
        separator = "&" if "?" in amqp_url else "?"
        return f"{amqp_url}{separator}{request.param}"

    @pytest.fixture
    def name(self) -> Callable[[str], str]:
        # As the suite's, but recorded so that conftest deletes the queues afterwards.
        suffix = unique_suffix()
        return lambda base: f"conf-{base}-{suffix}"
