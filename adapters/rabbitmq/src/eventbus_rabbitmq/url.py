"""The transport URL: ``amqp[s]://user:pass@host:port/vhost?option=value&...``.

eventbus's own options are parsed and validated here, then removed, so that aiormq only ever
sees the options it understands (TLS files, ``heartbeat``, ``name``, ...). Unknown options are an
error rather than silently ignored: a typo in ``queue_type`` must not quietly give classic queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from eventbus.errors import ConfigurationError

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


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the URL configures, with the defaults in one place.

    ``prefetch``: broker-side prefetch per consumer; ``None`` means use the subscription's own
    bound (``max_in_flight``). A larger value lets the broker keep a few deliveries buffered in
    the client (faster on quorum queues); the core still never holds more than its bound.
    ``queue_type``: type of the durable queues eventbus declares (groups, queues, dead letters,
    delay queues). ``partitions``: consistent-hash partitions per group (1 = a single queue).
    ``delivery_limit``: quorum queues only, ``x-delivery-limit`` (unset: unlimited on 3.10;
    eventbus never rejects, but every requeue after a lost connection counts toward it).
    ``publish_timeout``: how long a publish waits for the broker (reconnecting included) before
    `BrokerUnavailableError`. ``connect_timeout``: how long ``connect()`` tries.
    ``max_message_size``: overrides the size limit assumed from the broker version.
    """

    amqp_url: str
    address: str
    prefetch: int | None = None
    queue_type: QueueType = "classic"
    partitions: int = 1
    delivery_limit: int | None = None
    publish_timeout: float = 30.0
    connect_timeout: float = 10.0
    max_message_size: int | None = None


def parse_url(url: str) -> Settings:
    """Validate ``url`` and split it into `Settings` and the URL handed to aiormq."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ConfigurationError(f"RabbitMQ URL must start with amqp:// or amqps://, got {url!r}")
    if not parts.hostname:
        raise ConfigurationError(f"RabbitMQ URL has no host: {_censor(url)!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as e:
        raise ConfigurationError(f"RabbitMQ URL has an invalid port: {_censor(url)!r}") from e

    ours: dict[str, str] = {}
    passthrough: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _OPTIONS:
            if name in ours:
                raise ConfigurationError(f"RabbitMQ URL option {name!r} is given twice")
            ours[name] = value
        elif name in _AIORMQ_OPTIONS:
            passthrough.append((name, value))
        else:
            known = ", ".join(sorted(_OPTIONS.keys() | _AIORMQ_OPTIONS))
            raise ConfigurationError(f"unknown RabbitMQ URL option {name!r}; known: {known}")

    settings = {name: _OPTIONS[name](name, value) for name, value in ours.items()}
    amqp_url = urlunsplit(parts._replace(query=urlencode(passthrough), fragment=""))
    address = f"{_host(parts.hostname)}:{port}"
    return Settings(amqp_url=amqp_url, address=address, **settings)  # type: ignore[arg-type]


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigurationError(f"RabbitMQ URL option {name} must be an integer >= 1: {value!r}")
    return number


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0 or number != number or number == float("inf"):
        raise ConfigurationError(f"RabbitMQ URL option {name} must be seconds > 0, got {value!r}")
    return number


def _queue_type(name: str, value: str) -> str:
    if value not in ("classic", "quorum"):
        raise ConfigurationError(f"RabbitMQ URL option {name} must be classic or quorum: {value!r}")
    return value


_OPTIONS = {
    "prefetch": _positive_int,
    "queue_type": _queue_type,
    "partitions": _positive_int,
    "delivery_limit": _positive_int,
    "publish_timeout": _positive_float,
    "connect_timeout": _positive_float,
    "max_message_size": _positive_int,
}


def _host(hostname: str) -> str:
    return f"[{hostname}]" if ":" in hostname else hostname


def _censor(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
