"""The transport URL: ``amqp[s]://user:pass@host:port/vhost?option=value&...``.

eventbus's own options are parsed and validated here, then removed, so that aiormq only ever
sees the options it understands (TLS files, ``heartbeat``, ``name``, ...). Unknown options are an
error rather than silently ignored: a typo in ``queue_type`` must not quietly give classic queues.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import SplitResult, quote, unquote, urlencode, urlsplit, urlunsplit

from eventbus.errors import ConfigurationError
from eventbus.transports.tls import client_context, why_unloadable
from eventbus.transports.urls import (
    OptionParser,
    censor_url,
    choice,
    or_none,
    parse_options,
    positive_int,
    read_secret,
    seconds,
    text,
)

__all__ = ["Settings", "parse_url"]

QueueType = Literal["classic", "quorum"]

# Query options aiormq itself reads from the URL; passed through untouched.
_AIORMQ_OPTIONS = frozenset(
    {
        "auth",
        "cafile",
        "capath",
        "cadata",
        "certfile",
        "keyfile",
        "no_verify_ssl",
        "heartbeat",
        "name",
        "timeout",
    }
)
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the URL configures, with the defaults in one place.

    ``prefetch``: broker-side prefetch per consumer; ``None`` means use the subscription's own
    bound (``max_in_flight``). A larger value lets the broker keep a few deliveries buffered in
    the client (faster on quorum queues); the core still never holds more than its bound.
    ``queue_type``: type of the durable queues eventbus declares (groups, queues, dead letters,
    delay queues). ``partitions``: hash partitions per group (1 = a single queue).
    ``delivery_limit``: quorum queues only, ``x-delivery-limit`` (unset: unlimited on 3.10;
    eventbus never rejects, but every requeue after a lost connection counts toward it).
    ``publish_timeout``: how long a publish waits for the broker (reconnecting included) before
    `BrokerUnavailableError`. ``connect_timeout``: how long ``connect()`` tries.
    ``max_message_size``: overrides the size limit assumed from the broker version.
    ``read_ahead_bytes``: bound on the message bodies outstanding on a subscription's channel
    (buffered or handed out, not settled), on top of the prefetch count; ``None``: count only.
    64 MiB is far above what small messages reach (200 x 64 KiB is 12.5 MiB, never throttled)
    and far below prefetch x max_message_size (200 x 128 MiB is 25 GiB).
    """

    amqp_url: str = field(repr=False)  # holds the password
    address: str
    user: str = "guest"
    """Who logs in, for errors: the URL's user, ``guest`` (aiormq's default), or the client
    certificate's name with ``auth=external``."""
    vhost: str = "/"
    prefetch: int | None = None
    queue_type: QueueType = "classic"
    partitions: int = 1
    delivery_limit: int | None = None
    publish_timeout: float = 30.0
    connect_timeout: float = 10.0
    max_message_size: int | None = None
    read_ahead_bytes: int | None = 64 * _MIB
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    """The TLS context of ``amqps://``, built here rather than by aiormq: files are checked at
    parse time, an encrypted key takes ``ssl_key_password_file``, and nothing prompts on a
    terminal."""


def parse_url(url: str) -> Settings:
    """Validate ``url`` and split it into `Settings` and the URL handed to aiormq."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ConfigurationError(
            f"RabbitMQ URL must start with amqp:// or amqps://, got {censor_url(url)!r}"
        )
    hostname = parts.hostname
    if not hostname:
        raise ConfigurationError(f"RabbitMQ URL has no host: {censor_url(url)!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as e:
        raise ConfigurationError(f"RabbitMQ URL has an invalid port: {censor_url(url)!r}") from e
    settings, passthrough = parse_options("RabbitMQ", parts.query, _OPTIONS, _AIORMQ_OPTIONS)
    for option, value in passthrough:
        if option in ("cafile", "certfile", "keyfile") and not os.path.isfile(value):
            # Else the TLS context fails in every connection attempt, reported as unreachable.
            raise ConfigurationError(f"RabbitMQ URL option {option}: no such file {value!r}")
    password_file = settings.pop("password_file", None)
    if password_file is not None:
        parts = parts._replace(netloc=_with_password(parts, password_file, url))
    key_password_file = settings.pop("ssl_key_password_file", None)
    tls_context = None
    if parts.scheme == "amqps":
        tls_context = _client_tls(dict(passthrough), key_password_file)
    elif key_password_file is not None:
        raise ConfigurationError("RabbitMQ URL option ssl_key_password_file needs amqps://")
    amqp_url = urlunsplit(parts._replace(query=urlencode(passthrough), fragment=""))
    address = f"{_host(hostname)}:{port}"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"  # as AMQP URIs say
    user = unquote(parts.username) if parts.username else "guest"
    if dict(passthrough).get("auth", "").lower() == "external":
        user = "the client certificate's name (EXTERNAL)"
    return Settings(
        amqp_url=amqp_url,
        address=address,
        vhost=vhost,
        user=user,
        tls_context=tls_context,
        **settings,
    )


# The adapter's table; parsing, "unknown" and "given twice" errors are the core's (urls.py).
_OPTIONS: dict[str, OptionParser] = {
    "prefetch": positive_int,
    "queue_type": choice("classic", "quorum"),
    "partitions": positive_int,
    "delivery_limit": positive_int,
    "publish_timeout": seconds,
    "connect_timeout": seconds,
    "max_message_size": positive_int,
    "read_ahead_bytes": or_none(positive_int),
    "password_file": text,
    "ssl_key_password_file": text,
}


def _client_tls(options: dict[str, str], key_password_file: str | None) -> ssl.SSLContext:
    """The TLS context of an ``amqps://`` URL: what aiormq would make from the same options,
    plus the key's password (DESIGN 13's ``ssl_key_password_file``). Built here, so that files
    that cannot be loaded are refused when the URL is parsed, not at every connection."""
    if key_password_file is not None and "certfile" not in options:
        raise ConfigurationError(
            "RabbitMQ URL option ssl_key_password_file needs certfile (and keyfile)"
        )
    password = None
    if key_password_file is not None:
        password = read_secret("RabbitMQ", "ssl_key_password_file", key_password_file)
    try:
        context = client_context(
            cafile=options.get("cafile"),
            capath=options.get("capath"),
            cadata=options.get("cadata"),
            certfile=options.get("certfile"),
            keyfile=options.get("keyfile"),
            key_password=password,
        )
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; bad base64 a ValueError
        files = {k: options[k] for k in ("cafile", "capath", "certfile", "keyfile") if k in options}
        raise ConfigurationError(
            f"RabbitMQ URL: cannot load the TLS files {files}: {why_unloadable(exc)}; check "
            "them (cadata is base64) and ssl_key_password_file"
        ) from None
    if options.get("no_verify_ssl", "0") != "0":  # aiormq's own escape hatch, kept
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _with_password(parts: SplitResult, path: str, url: str) -> str:
    """The URL's netloc with the password read from ``password_file`` (DESIGN 13: no secret on
    a command line or in an environment variable's URL)."""
    if parts.password is not None:
        raise ConfigurationError(
            f"RabbitMQ URL {censor_url(url)!r} has a password and password_file: give one"
        )
    if not parts.username:
        raise ConfigurationError(
            f"RabbitMQ URL {censor_url(url)!r}: password_file needs a user (amqps://USER@host/)"
        )
    password = quote(read_secret("RabbitMQ", "password_file", path), safe="")
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.username}:{password}@{host}"


def _host(hostname: str) -> str:
    return f"[{hostname}]" if ":" in hostname else hostname
