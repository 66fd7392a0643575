"""Request-reply conformance on the in-memory transport."""

import pytest

from eventbus.testing.request_conformance import RequestReplySuite


class TestMemoryRequestReply(RequestReplySuite):
    @pytest.fixture
    def bus_url(self) -> str:
        return "memory://requests"
