"""The whole conformance suite over SASL_SSL (SCRAM-SHA-512, ACLs on, the password from a
file) and the request-reply suite over TLS with the client certificate: what a managed Kafka
with TLS and SASL or certificate logins gets."""

from pathlib import Path

import pytest
from tls_helpers import Certs, kafka_mtls, kafka_scram, secured_kafka_url

from eventbus.testing.conformance import ConformanceSuite
from eventbus.testing.request_conformance import RequestReplySuite

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kafka-secret") / "password"
    path.write_text("eventbus-app-secret\n")
    return path


class TestKafkaConformanceOverSaslSsl(ConformanceSuite):
    @pytest.fixture
    def bus_url(self, kafka_sasl_url: str, certs: Certs, password_file: Path) -> str:
        options = kafka_scram(certs, "eventbus-app", str(password_file))
        return secured_kafka_url(kafka_sasl_url, **options)


class TestKafkaRequestReplyOverMutualTls(RequestReplySuite):
    @pytest.fixture
    def bus_url(self, kafka_ssl_url: str, certs: Certs) -> str:
        return secured_kafka_url(kafka_ssl_url, **kafka_mtls(certs))
