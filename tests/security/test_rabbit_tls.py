"""RabbitMQ over mutual TLS (the listener verifies client certificates), with EXTERNAL and
password logins, and each refusal as the error a user can act on."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
from tls_helpers import Certs, round_trip

from eventbus import AuthenticationError, AuthorizationError, EventBus

pytestmark = pytest.mark.amqp


def _url(base: str, *, host: str | None = None, user: str = "", **options: str) -> str:
    scheme, rest = base.split("://", 1)
    hostport = rest.split("/", 1)[0]
    if host is not None:
        hostport = f"{host}:{hostport.rsplit(':', 1)[1]}"
    login = f"{user}@" if user else ""
    return f"{scheme}://{login}{hostport}/?{urlencode(options)}"


def _mtls(certs: Certs, **more: str) -> dict[str, str]:
    return {
        "cafile": certs["ca.pem"],
        "certfile": certs["client.pem"],
        "keyfile": certs["client.key"],
        **more,
    }


async def test_mutual_tls_with_an_external_login(amqps_url: str, certs: Certs) -> None:
    url = _url(amqps_url, **_mtls(certs, auth="external"))
    assert await round_trip(url, f"tls-{uuid.uuid4().hex[:8]}") == [0, 1, 2]


async def test_a_password_from_a_file_over_mutual_tls(
    amqps_url: str, certs: Certs, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("limited-secret\n")  # as `echo` writes it
    url = _url(amqps_url, user="limited", password_file=str(secret), **_mtls(certs))
    assert await round_trip(url, f"limited.tls-{uuid.uuid4().hex[:8]}") == [0, 1, 2]


async def test_a_wrong_password_names_the_user_and_never_the_password(
    amqps_url: str, certs: Certs, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("not-the-password")
    url = _url(amqps_url, user="limited", password_file=str(secret), **_mtls(certs))
    with pytest.raises(AuthenticationError) as raised:
        async with EventBus(url).publisher():
            pass
    text = str(raised.value)
    assert "localhost:5671" in text and "'limited'" in text
    assert "not-the-password" not in text


async def test_an_untrusted_server_certificate_is_an_authentication_error(
    amqps_url: str, certs: Certs
) -> None:
    url = _url(amqps_url, **_mtls(certs, cafile=certs["other-ca.pem"], auth="external"))
    with pytest.raises(AuthenticationError, match="certificate") as raised:
        async with EventBus(url).publisher():
            pass
    assert "localhost:5671" in str(raised.value) and "(EXTERNAL)" in str(raised.value)


async def test_a_hostname_mismatch_is_an_authentication_error(amqps_url: str, certs: Certs) -> None:
    """The certificate names localhost; 127.0.0.1 is the same broker but not that name."""
    url = _url(amqps_url, host="127.0.0.1", **_mtls(certs, auth="external"))
    with pytest.raises(AuthenticationError, match=r"(?i)hostname|IP address mismatch"):
        async with EventBus(url).publisher():
            pass


async def test_a_client_certificate_the_broker_does_not_trust_is_refused(
    amqps_url: str, certs: Certs
) -> None:
    options = {"certfile": certs["other-client.pem"], "keyfile": certs["other-client.key"]}
    url = _url(amqps_url, **_mtls(certs, auth="external", **options))
    with pytest.raises(AuthenticationError, match="refused the handshake"):
        async with EventBus(url).publisher():
            pass


async def test_missing_permissions_name_the_destination_and_the_user(
    amqps_url: str, certs: Certs, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("limited-secret")
    url = _url(amqps_url, user="limited", password_file=str(secret), **_mtls(certs))
    queue = f"tls-forbidden-{uuid.uuid4().hex[:8]}"
    async with EventBus(url).publisher() as bus:
        with pytest.raises(AuthorizationError) as raised:
            await bus.send(queue, 1)
    text = str(raised.value)
    assert queue in text and "limited" in text and "limited-secret" not in text


def test_a_missing_certificate_file_is_refused_at_once_by_name(certs: Certs) -> None:
    from eventbus import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"certfile: no such file '/nowhere/me\.pem'"):
        EventBus(f"amqps://localhost:5671/?cafile={certs['ca.pem']}&certfile=/nowhere/me.pem")


async def test_an_encrypted_client_key_with_its_password_from_a_file(
    amqps_url: str, certs: Certs, tmp_path: Path
) -> None:
    secret = tmp_path / "key-password"
    secret.write_text("client-key-secret\n")
    options = _mtls(
        certs,
        auth="external",
        keyfile=certs["client-encrypted.key"],
        ssl_key_password_file=str(secret),
    )
    url = _url(amqps_url, **options)
    assert await round_trip(url, f"tls-key-{uuid.uuid4().hex[:8]}") == [0, 1, 2]


def test_an_encrypted_client_key_without_its_password_is_refused_at_once(
    amqps_url: str, certs: Certs, tmp_path: Path
) -> None:
    """Refused when the URL is parsed -- never OpenSSL's prompt on a terminal."""
    from eventbus import ConfigurationError

    secret = tmp_path / "key-password"
    secret.write_text("not-the-key-password")
    for extra in ({}, {"ssl_key_password_file": str(secret)}):
        options = _mtls(certs, keyfile=certs["client-encrypted.key"], **extra)
        with pytest.raises(ConfigurationError, match="cannot load the TLS files") as e:
            EventBus(_url(amqps_url, **options))
        assert "not-the-key-password" not in str(e.value)
