"""``kafka://`` URLs -> `KafkaSettings`: every option, its default and its validation in one place.

    kafka://[user:password@]host:port[,host:port...][?option=value&...]

Options: ``client_id``, ``partitions`` (default 6), ``replication_factor`` (1),
``offset_reset`` (``earliest``), ``security_protocol`` (``PLAINTEXT``, ``SSL``,
``SASL_PLAINTEXT``, ``SASL_SSL``), ``sasl_mechanism`` (``PLAIN``, ``SCRAM-SHA-256``,
``SCRAM-SHA-512``), ``sasl_username``, ``sasl_password`` or ``sasl_password_file`` (a file
holding it, DESIGN 13), ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_key_password_file`` (for an encrypted key), ``max_message_size`` (bytes, 1 MiB),
``connect_timeout`` (seconds, 15), ``publish_timeout`` (60), ``join_timeout`` (60),
``commit_interval`` (0.5),
``revoke_drain_timeout`` (10), ``offset_window`` (records, 20 000), ``reply_topic`` (where
replies to this app's requests go: ``<client_id>.replies``), ``reply_partitions`` (16: at most
that many buses of the app make requests at once).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from eventbus.errors import ConfigurationError
from eventbus.transports.tls import client_context, why_unloadable
from eventbus.transports.urls import (
    OptionParser,
    censor_url,
    choice,
    parse_options,
    positive_int,
    read_secret,
    seconds,
    text,
)

__all__ = ["KafkaSettings", "parse_url"]

DEFAULT_PORT = 9092

OffsetReset = Literal["earliest", "latest"]

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Validated configuration of one Kafka transport. Seconds are floats, sizes are bytes."""

    bootstrap_servers: tuple[str, ...]
    client_id: str = "eventbus"
    partitions: int = 6
    """Partition count of the topics eventbus creates (it never alters existing topics)."""
    replication_factor: int = 1
    offset_reset: OffsetReset = "earliest"
    """Where a consumer group with no committed offset starts. ``earliest`` by default so a
    group subscribed after messages were published still gets them (queue semantics); queues
    and retry topics always start at the earliest offset whatever this says."""
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    """The TLS context `parse_url` loaded once (`load_tls`), shared by every client."""
    max_message_size: int = 1024 * 1024
    """Largest body eventbus lets through; topics it creates accept this plus headroom."""
    connect_timeout: float = 15.0
    publish_timeout: float = 60.0
    """How long a publish waits for the broker (e.g. during a restart) before failing."""
    join_timeout: float = 60.0
    """How long ``subscribe`` waits for the group join and partition assignment."""
    commit_interval: float = 0.5
    revoke_drain_timeout: float = 10.0
    reply_topic: str = ""
    """The topic replies to requests come back on: ``<client_id>.replies`` when empty. One per
    application; each bus that makes requests leases one of its partitions."""
    reply_partitions: int = 16
    offset_window: int = 20_000
    """Records tracked behind one unfinished record of a partition before that partition
    pauses until it is settled: bounds memory whatever one stuck handler does."""
    """On revocation, how long handed-out deliveries of the revoked partitions may take to be
    settled before they are reported lost and the partitions let go. The group's rebalance
    timeout is derived from it, so a long drain does not get this member kicked out."""

    @property
    def replies(self) -> str:
        """The reply topic's name."""
        return self.reply_topic or f"{self.client_id}.replies"

    @property
    def address(self) -> str:
        """The bootstrap list as shown in errors: ``host:port,host:port``."""
        return ",".join(self.bootstrap_servers)

    @property
    def user(self) -> str:
        """Who the broker sees, as refusals name it (never with a secret)."""
        if self.security_protocol.startswith("SASL"):
            return f"user {self.sasl_username!r}"
        if self.ssl_certfile:
            return f"the client certificate {os.path.basename(self.ssl_certfile)!r}"
        return "ANONYMOUS"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client (producer, consumer, admin) shares."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        if self.security_protocol.endswith("SSL"):
            options["ssl_context"] = self.tls_context or self.load_tls()
        return options

    def load_tls(self) -> ssl.SSLContext:
        """A TLS context from the ``ssl_*`` options: the system's CAs or ``ssl_cafile``, host
        names checked, and the client certificate for mutual TLS."""
        try:
            return client_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
                key_password=self.ssl_key_password,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            # Not PEM, unreadable, or an encrypted key without (or with a wrong) password.
            raise ConfigurationError(
                f"kafka URL: cannot load the TLS files (ssl_cafile={self.ssl_cafile!r}, "
                f"ssl_certfile={self.ssl_certfile!r}, ssl_keyfile={self.ssl_keyfile!r}): "
                f"{why_unloadable(exc)}; check them and ssl_key_password_file"
            ) from None


_OPTIONS: dict[str, OptionParser] = {
    "client_id": text,
    "partitions": positive_int,
    "replication_factor": positive_int,
    "offset_reset": choice("earliest", "latest"),
    "security_protocol": choice(*_SECURITY_PROTOCOLS, upper=True),
    "sasl_mechanism": choice(*_SASL_MECHANISMS, upper=True),
    "sasl_username": text,
    "sasl_password": text,
    "sasl_password_file": text,
    "ssl_cafile": text,
    "ssl_certfile": text,
    "ssl_keyfile": text,
    "ssl_key_password_file": text,
    "max_message_size": positive_int,
    "connect_timeout": seconds,
    "publish_timeout": seconds,
    "join_timeout": seconds,
    "commit_interval": seconds,
    "offset_window": positive_int,
    "revoke_drain_timeout": seconds,
    "reply_topic": text,
    "reply_partitions": positive_int,
}
"""This adapter's table; parsing, validation and the errors are the core's (`urls`)."""


def _parse_host(shown: str, item: str) -> str:
    """``host:port`` of one bootstrap server; ``shown`` is the URL as errors may show it."""
    item = item.strip()
    if item.startswith("["):  # IPv6 literal: [::1]:9092
        host, sep, rest = item[1:].partition("]")
        if not sep or not host:
            raise ConfigurationError(f"bad broker address {item!r} in {shown!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigurationError(f"bad broker address {item!r} in {shown!r}")
        host = f"[{host}]"
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ConfigurationError(f"missing broker host in {shown!r} (kafka://host:port)")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigurationError(f"bad broker port {port_text!r} in {shown!r}")
        port = int(port_text)
    return f"{host}:{port}"


def parse_url(url: str) -> KafkaSettings:
    """Parse and validate a ``kafka://`` URL; raise `ConfigurationError` naming what is wrong."""
    shown = censor_url(url)  # errors never show a password
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ConfigurationError(f"bad kafka URL {shown!r}: {exc}") from None
    if parts.scheme != "kafka":
        raise ConfigurationError(f"not a kafka:// URL: {shown!r}")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigurationError(
            f"kafka URL {shown!r} must not have a path or fragment (options go in the query)"
        )
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    servers = tuple(_parse_host(shown, item) for item in hosts.split(","))

    values: dict[str, Any] = {}
    if userinfo:
        user, _, password = userinfo.partition(":")
        values["sasl_username"] = unquote(user)
        if password:
            values["sasl_password"] = unquote(password)
    options, _ = parse_options("kafka", parts.query, _OPTIONS)
    password_file = options.pop("sasl_password_file", None)
    if password_file is not None:
        if "sasl_password" in values or "sasl_password" in options:
            raise ConfigurationError(
                f"kafka URL {shown!r} has a SASL password and sasl_password_file: give one"
            )
        options["sasl_password"] = read_secret("kafka", "sasl_password_file", password_file)
    key_password_file = options.pop("ssl_key_password_file", None)
    if key_password_file is not None:
        options["ssl_key_password"] = read_secret(
            "kafka", "ssl_key_password_file", key_password_file
        )
    for option in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = options.get(option)
        if path is not None and not os.path.isfile(path):
            # Else every connection attempt fails alike, reported as an unreachable broker.
            raise ConfigurationError(f"kafka URL option {option}: no such file {path!r}")
    values.update(options)

    settings = KafkaSettings(bootstrap_servers=servers, **values)
    if settings.sasl_username and not settings.security_protocol.startswith("SASL"):
        raise ConfigurationError(
            "kafka URL has SASL credentials but security_protocol is "
            f"{settings.security_protocol}; add security_protocol=SASL_PLAINTEXT or SASL_SSL"
        )
    if settings.security_protocol.startswith("SASL") and not (
        settings.sasl_username and settings.sasl_password
    ):
        raise ConfigurationError(
            f"security_protocol={settings.security_protocol} needs sasl_username and "
            "sasl_password (or user:password@ in the URL)"
        )
    if settings.ssl_keyfile and not settings.ssl_certfile:
        raise ConfigurationError("kafka URL option ssl_keyfile needs ssl_certfile")
    if settings.ssl_key_password and not settings.ssl_certfile:
        raise ConfigurationError("kafka URL option ssl_key_password_file needs ssl_certfile")
    if settings.security_protocol.endswith("SSL"):
        # Loaded once, here: files that cannot be loaded fail now, not at each connection.
        settings = replace(settings, tls_context=settings.load_tls())
    return settings
