"""The whole conformance suite over mutual TLS, logged in with the client certificate
(EXTERNAL): what a managed RabbitMQ with TLS and certificate logins gets."""

from urllib.parse import urlencode

import pytest
from tls_helpers import Certs

from eventbus.testing.conformance import ConformanceSuite
from eventbus.testing.request_conformance import RequestReplySuite

pytestmark = pytest.mark.amqp


def mtls_url(amqps_url: str, certs: Certs) -> str:
    options = {
        "cafile": certs["ca.pem"],
        "certfile": certs["client.pem"],
        "keyfile": certs["client.key"],
        "auth": "external",
    }
    return f"{amqps_url}?{urlencode(options)}"


class TestRabbitConformanceOverMutualTls(ConformanceSuite):
    @pytest.fixture
    def bus_url(self, amqps_url: str, certs: Certs) -> str:
        return mtls_url(amqps_url, certs)


class TestRabbitRequestReplyOverMutualTls(RequestReplySuite):
    @pytest.fixture
    def bus_url(self, amqps_url: str, certs: Certs) -> str:
        return mtls_url(amqps_url, certs)
