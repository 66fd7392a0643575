"""URL parsing and validation (no broker needed)."""

from pathlib import Path

import pytest
from eventbus_rabbitmq.connection import Connector
from eventbus_rabbitmq.url import parse_url

from eventbus.errors import ConfigurationError


def test_defaults_and_address() -> None:
    settings = parse_url("amqp://guest:guest@127.0.0.1:5672/")
    assert settings.address == "127.0.0.1:5672"
    assert settings.queue_type == "classic"
    assert settings.partitions == 1
    assert settings.prefetch is None
    assert settings.publish_timeout == 30.0
    assert settings.read_ahead_bytes == 64 * 1024 * 1024
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"


def test_read_ahead_bytes_is_a_positive_size_or_none() -> None:
    assert parse_url("amqp://h/?read_ahead_bytes=1048576").read_ahead_bytes == 1048576
    assert parse_url("amqp://h/?read_ahead_bytes=none").read_ahead_bytes is None
    assert parse_url("amqp://h/?read_ahead_bytes=None").read_ahead_bytes is None


def test_eventbus_options_are_parsed_and_stripped_aiormq_options_kept() -> None:
    settings = parse_url(
        "amqps://u:p@broker/vhost?prefetch=200&queue_type=quorum&partitions=8"
        "&heartbeat=30&delivery_limit=50&publish_timeout=5&name=billing"
    )
    assert settings.address == "broker:5671"
    assert (settings.prefetch, settings.queue_type, settings.partitions) == (200, "quorum", 8)
    assert settings.delivery_limit == 50
    assert settings.publish_timeout == 5.0
    assert settings.amqp_url == "amqps://u:p@broker/vhost?heartbeat=30&name=billing"


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("amqp://h/?queue_type=stream", "queue_type"),
        ("amqp://h/?partitions=0", "partitions"),
        ("amqp://h/?prefetch=lots", "prefetch"),
        ("amqp://h/?read_ahead_bytes=0", "read_ahead_bytes"),
        ("amqp://h/?read_ahead_bytes=64MiB", "read_ahead_bytes"),
        ("amqp://h/?publish_timeout=-1", "publish_timeout"),
        ("amqp://h/?queue_typo=quorum", "queue_typo"),
        ("amqp://h/?partitions=2&partitions=3", "partitions"),
    ],
)
def test_bad_options_name_the_option(url: str, option: str) -> None:
    with pytest.raises(ConfigurationError, match=option):
        parse_url(url)


@pytest.mark.parametrize("url", ["kafka://h:9092", "amqp:///vhost", "amqp://h:notaport/"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_url(url)


@pytest.mark.parametrize(
    "url", ["amqp://user:s3cret@h:bad/", "amqpx://user:s3cret@h/", "amqp://user:s3cret@:5672/"]
)
def test_error_messages_do_not_show_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(url)
    assert "s3cret" not in str(info.value)


def test_the_name_option_names_the_connections_by_purpose() -> None:
    settings = parse_url("amqp://guest:guest@127.0.0.1:5672/?name=billing")
    assert Connector(settings, "consumer").name == "billing consumer"
    plain = parse_url("amqp://guest:guest@127.0.0.1:5672/")
    assert Connector(plain, "publisher").name == "eventbus publisher"


def test_settings_repr_never_shows_the_password() -> None:
    settings = parse_url("amqp://bob:s3cret@127.0.0.1:5672/vh?queue_type=quorum")
    assert "s3cret" not in repr(settings) and "quorum" in repr(settings)


def test_tls_files_that_cannot_be_loaded_are_refused_by_name(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match=r"cannot load the TLS files.*ca\.pem"):
        parse_url(f"amqps://h/?cafile={not_pem}")
    with pytest.raises(ConfigurationError, match="needs amqps://"):
        parse_url(f"amqp://h/?ssl_key_password_file={not_pem}")
    assert parse_url("amqps://h/").tls_context is not None  # the system's CAs
    assert parse_url("amqp://h/").tls_context is None
