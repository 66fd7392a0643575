"""kafka:// URL parsing: defaults, every option, and clear errors naming the bad option."""

from pathlib import Path

import pytest
from eventbus_kafka.url import KafkaSettings, parse_url

from eventbus.errors import ConfigurationError


def test_defaults() -> None:
    s = parse_url("kafka://127.0.0.1:9092")
    assert s == KafkaSettings(bootstrap_servers=("127.0.0.1:9092",))
    assert (s.partitions, s.replication_factor, s.offset_reset) == (6, 1, "earliest")
    assert s.security_protocol == "PLAINTEXT"
    assert s.max_message_size == 1024 * 1024


def test_several_hosts_default_port_and_ipv6() -> None:
    s = parse_url("kafka://a:1,b,[::1]:9093")
    assert s.bootstrap_servers == ("a:1", "b:9092", "[::1]:9093")
    assert s.address == "a:1,b:9092,[::1]:9093"


def test_options() -> None:
    s = parse_url(
        "kafka://h:1?client_id=svc&partitions=12&replication_factor=3&offset_reset=latest"
        "&max_message_size=5000000&connect_timeout=2.5&publish_timeout=30&join_timeout=20"
        "&commit_interval=0.2&revoke_drain_timeout=2.5"
    )
    assert s.client_id == "svc"
    assert (s.partitions, s.replication_factor, s.offset_reset) == (12, 3, "latest")
    assert s.max_message_size == 5_000_000
    assert (s.connect_timeout, s.publish_timeout, s.join_timeout) == (2.5, 30.0, 20.0)
    assert s.commit_interval == 0.2
    assert s.revoke_drain_timeout == 2.5
    assert parse_url("kafka://h:1").revoke_drain_timeout == 10.0


def test_sasl_from_options_and_from_userinfo() -> None:
    s = parse_url(
        "kafka://h:1?security_protocol=sasl_ssl&sasl_mechanism=SCRAM-SHA-512"
        "&sasl_username=u&sasl_password=p"
    )
    assert (s.security_protocol, s.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (s.sasl_username, s.sasl_password) == ("u", "p")
    options = s.client_options()
    assert options["sasl_plain_username"] == "u"
    assert options["ssl_context"] is not None
    s = parse_url("kafka://us%40er:p%3Ass@h:1?security_protocol=SASL_PLAINTEXT")
    assert (s.sasl_username, s.sasl_password) == ("us@er", "p:ss")
    assert "p:ss" not in repr(s)


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("kafka://h:1?partitions=0", "partitions"),
        ("kafka://h:1?partitions=six", "partitions"),
        ("kafka://h:1?replication_factor=-1", "replication_factor"),
        ("kafka://h:1?offset_reset=middle", "offset_reset"),
        ("kafka://h:1?security_protocol=TLS", "security_protocol"),
        ("kafka://h:1?sasl_mechanism=GSSAPI", "sasl_mechanism"),
        ("kafka://h:1?connect_timeout=0", "connect_timeout"),
        ("kafka://h:1?connect_timeout=nan", "connect_timeout"),
        ("kafka://h:1?client_id=", "client_id"),
        ("kafka://h:1?revoke_drain_timeout=0", "revoke_drain_timeout"),
        ("kafka://h:1?revoke_drain_timeout=-1", "revoke_drain_timeout"),
        ("kafka://h:1?revoke_drain_timeout=inf", "revoke_drain_timeout"),
        ("kafka://h:1?revoke_drain_timeout=ten", "revoke_drain_timeout"),
        ("kafka://h:1?bogus=1", "bogus"),
        ("kafka://h:1?partitions=1&partitions=2", "partitions"),
        ("kafka://h:99999", "99999"),
        ("kafka://:9092", "host"),
        ("kafka://h:1/path", "path"),
        ("amqp://h:1", "kafka://"),
        ("kafka://u:p@h:1", "security_protocol"),
        ("kafka://h:1?security_protocol=SASL_SSL", "sasl_username"),
    ],
)
def test_bad_values_name_the_option(url: str, names: str) -> None:
    with pytest.raises(ConfigurationError, match=names):
        parse_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "kafka://u:s3cret@h:1/path?security_protocol=SASL_PLAINTEXT",
        "kafka://u:s3cret@h:99999?security_protocol=SASL_PLAINTEXT",
        "kafka://u:s3cret@[::1?security_protocol=SASL_PLAINTEXT",
        "kafka://h:1?sasl_password=s3cret&bogus=1",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_url(url)
    assert "s3cret" not in str(caught.value)


def test_secrets_from_files(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    s = parse_url(f"kafka://svc@h:1?security_protocol=SASL_PLAINTEXT&sasl_password_file={password}")
    assert (s.sasl_username, s.sasl_password) == ("svc", "s3cret")
    assert s.user == "user 'svc'" and "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("sasl_password_file={missing}", r"sasl_password_file: cannot read '.*missing'"),
        ("sasl_password_file={empty}", "is empty"),
        ("sasl_password=p&sasl_password_file={empty}", "give one"),
        ("ssl_cafile={missing}", r"ssl_cafile: no such file"),
        ("ssl_key_password_file={empty}", "ssl_key_password_file"),
    ],
)
def test_secret_and_certificate_files_are_checked_by_name(
    tmp_path: Path, query: str, names: str
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    missing = tmp_path / "missing"
    url = "kafka://u@h:1?security_protocol=SASL_SSL&" + query.format(missing=missing, empty=empty)
    with pytest.raises(ConfigurationError, match=names):
        parse_url(url)


def test_who_refusals_name() -> None:
    assert parse_url("kafka://h:1").user == "ANONYMOUS"


def test_tls_files_that_cannot_be_loaded_are_refused_by_name(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match=r"cannot load the TLS files.*ca\.pem"):
        parse_url(f"kafka://h:1?security_protocol=SSL&ssl_cafile={not_pem}")
