"""Finding a transport by URL scheme through the ``eventbus.transports`` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points
from urllib.parse import urlsplit

from eventbus.errors import ConfigurationError, UnknownSchemeError
from eventbus.transports.base import Transport, TransportFactory

__all__ = ["installed_schemes", "transport_for_url"]

GROUP = "eventbus.transports"


def installed_schemes() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def transport_for_url(url: str) -> Transport:
    scheme = urlsplit(url).scheme
    if not scheme or "://" not in url:
        raise ConfigurationError(
            f"bad eventbus URL {url!r}: expected scheme://..., e.g. memory://, "
            "kafka://127.0.0.1:9092 or amqp://guest:guest@127.0.0.1:5672/"
        )
    found = entry_points(group=GROUP, name=scheme)
    if not found:
        raise UnknownSchemeError(scheme, installed_schemes())
    factory: TransportFactory = next(iter(found)).load()
    return factory(url)
