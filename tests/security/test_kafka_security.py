"""Kafka over TLS with client certificates (the SSL listener) and over SASL_SSL with SCRAM and
PLAIN, with ACLs on (scripts/brokers), and each refusal as the error a user can act on."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from tls_helpers import Certs, kafka_mtls, kafka_scram, round_trip, secured_kafka_url

from eventbus import AuthenticationError, AuthorizationError, ConfigurationError, EventBus

pytestmark = pytest.mark.kafka

AT_ONCE = "60"
"""connect_timeout for the refusals: raised later than at once, they would end as
`BrokerUnavailableError` after a minute, and fail by type -- no timing asserted."""


@pytest.fixture
def app_password(tmp_path: Path) -> str:
    secret = tmp_path / "kafka-password"
    secret.write_text("eventbus-app-secret\n")  # as `echo` writes it
    return str(secret)


async def test_mutual_tls_with_the_client_certificate(kafka_ssl_url: str, certs: Certs) -> None:
    url = secured_kafka_url(kafka_ssl_url, **kafka_mtls(certs))
    assert await round_trip(url, f"tls-{uuid.uuid4().hex[:8]}") == [0, 1, 2]


async def test_an_encrypted_client_key_with_its_password_from_a_file(
    kafka_ssl_url: str, certs: Certs, tmp_path: Path
) -> None:
    secret = tmp_path / "key-password"
    secret.write_text("client-key-secret\n")
    options = kafka_mtls(
        certs, ssl_keyfile=certs["client-encrypted.key"], ssl_key_password_file=str(secret)
    )
    url = secured_kafka_url(kafka_ssl_url, **options)
    assert await round_trip(url, f"tls-key-{uuid.uuid4().hex[:8]}") == [0, 1, 2]


def test_an_encrypted_client_key_without_its_password_is_refused_at_once(
    kafka_ssl_url: str, certs: Certs, tmp_path: Path
) -> None:
    secret = tmp_path / "key-password"
    secret.write_text("not-the-key-password")
    for extra in ({}, {"ssl_key_password_file": str(secret)}):
        options = kafka_mtls(certs, ssl_keyfile=certs["client-encrypted.key"], **extra)
        with pytest.raises(ConfigurationError, match="cannot load the TLS files") as e:
            EventBus(secured_kafka_url(kafka_ssl_url, **options))
        assert "not-the-key-password" not in str(e.value)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
async def test_sasl_over_tls_with_the_password_from_a_file(
    kafka_sasl_url: str, certs: Certs, app_password: str, mechanism: str
) -> None:
    options = kafka_scram(certs, "eventbus-app", app_password, sasl_mechanism=mechanism)
    url = secured_kafka_url(kafka_sasl_url, **options)
    assert await round_trip(url, f"sasl-{uuid.uuid4().hex[:8]}") == [0, 1, 2]


async def test_a_wrong_password_names_the_address_and_user_and_never_the_password(
    kafka_sasl_url: str, certs: Certs, tmp_path: Path
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("not-the-password")
    # A minute to connect: a refusal not raised at once would end in BrokerUnavailableError.
    options = kafka_scram(certs, "eventbus-app", str(secret), connect_timeout=AT_ONCE)
    url = secured_kafka_url(kafka_sasl_url, **options)
    with pytest.raises(AuthenticationError) as raised:
        async with EventBus(url).publisher():
            pass
    text = str(raised.value)
    assert "localhost:9096" in text and "'eventbus-app'" in text
    assert "not-the-password" not in text


async def test_an_untrusted_server_certificate_is_an_authentication_error(
    kafka_sasl_url: str, certs: Certs, app_password: str
) -> None:
    options = kafka_scram(
        certs,
        "eventbus-app",
        app_password,
        ssl_cafile=certs["other-ca.pem"],
        connect_timeout=AT_ONCE,
    )
    with pytest.raises(AuthenticationError, match="certificate was refused") as raised:
        async with EventBus(secured_kafka_url(kafka_sasl_url, **options)).publisher():
            pass
    assert "localhost:9096" in str(raised.value) and "'eventbus-app'" in str(raised.value)


async def test_a_hostname_mismatch_is_an_authentication_error(
    kafka_ssl_url: str, certs: Certs
) -> None:
    """The certificate names localhost; 127.0.0.1 is the same broker but not that name."""
    url = secured_kafka_url(
        kafka_ssl_url, host="127.0.0.1", **kafka_mtls(certs, connect_timeout=AT_ONCE)
    )
    with pytest.raises(AuthenticationError, match=r"IP address mismatch"):
        async with EventBus(url).publisher():
            pass


@pytest.mark.parametrize("client", ["other-client", None])
async def test_a_client_certificate_the_broker_refuses_or_none_is_an_authentication_error(
    kafka_ssl_url: str, certs: Certs, client: str | None
) -> None:
    options = kafka_mtls(certs, connect_timeout=AT_ONCE)
    if client is None:
        del options["ssl_certfile"], options["ssl_keyfile"]
    else:
        options.update(ssl_certfile=certs[f"{client}.pem"], ssl_keyfile=certs[f"{client}.key"])
    with pytest.raises(AuthenticationError, match="refused the handshake") as raised:
        async with EventBus(secured_kafka_url(kafka_ssl_url, **options)).publisher():
            pass
    who = "the client certificate 'other-client.pem'" if client else "ANONYMOUS"
    assert "localhost:9095" in str(raised.value) and f"(as {who})" in str(raised.value)


async def test_missing_acls_name_the_topic_the_user_and_the_address(
    kafka_sasl_url: str, certs: Certs, tmp_path: Path
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("limited-secret")
    url = secured_kafka_url(kafka_sasl_url, **kafka_scram(certs, "limited", str(secret)))
    topic = f"forbidden-{uuid.uuid4().hex[:8]}"
    async with EventBus(url).publisher() as bus:
        await bus.publish(f"limited.{topic}", 1)  # its own names: allowed
        with pytest.raises(AuthorizationError) as raised:
            await bus.publish(topic, 1)
    text = str(raised.value)
    assert topic in text and "'limited'" in text and "localhost:9096" in text
    assert "limited-secret" not in text


async def test_a_group_the_user_may_not_join_is_an_authorization_error(
    kafka_sasl_url: str, certs: Certs, tmp_path: Path
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("limited-secret")
    url = secured_kafka_url(kafka_sasl_url, **kafka_scram(certs, "limited", str(secret)))
    bus = EventBus(url)
    topic = f"limited.grouped-{uuid.uuid4().hex[:8]}"

    @bus.subscribe(topic, group="not-limited")
    async def handle(n: int) -> None:
        pass

    with pytest.raises(AuthorizationError) as raised:
        async with bus:
            pass
    text = str(raised.value)
    assert "not-limited" in text and "'limited'" in text and "localhost:9096" in text
