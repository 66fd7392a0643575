"""Finding a transport by URL scheme through the ``eventbus.transports`` entry points."""

from __future__ import annotations

from importlib.metadata import Distribution, entry_points
from urllib.parse import urlsplit

from eventbus.errors import ConfigurationError, UnknownSchemeError
from eventbus.transports.base import SPI_VERSION, Transport, TransportFactory
from eventbus.transports.urls import censor_url

__all__ = ["check_spi_version", "installed_schemes", "transport_for_url"]

GROUP = "eventbus.transports"


def installed_schemes() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def transport_for_url(url: str) -> Transport:
    scheme = urlsplit(url).scheme
    if not scheme or "://" not in url:
        raise ConfigurationError(
            f"bad eventbus URL {censor_url(url)!r}: expected scheme://..., e.g. memory://, "
            "kafka://127.0.0.1:9092 or amqp://guest:guest@127.0.0.1:5672/"
        )
    found = entry_points(group=GROUP, name=scheme)
    if not found:
        raise UnknownSchemeError(scheme, installed_schemes())
    entry = next(iter(found))
    factory: TransportFactory = entry.load()
    check_spi_version(scheme, getattr(factory, "spi_version", 1), entry.dist)
    transport = factory(url)
    check_spi_version(scheme, getattr(transport, "spi_version", 1), entry.dist)
    return transport


def check_spi_version(scheme: str, version: object, dist: Distribution | None = None) -> None:
    """Refuse a transport built for another SPI version, saying which package to change."""
    if version == SPI_VERSION:
        return
    from eventbus import __version__

    who = f"{dist.name} {dist.version}" if dist is not None else f"the {scheme}:// transport"
    raise ConfigurationError(
        f"{who} implements transport SPI version {version}, but eventbus {__version__} needs "
        f"version {SPI_VERSION}: install a {scheme}:// adapter built for this eventbus "
        f"(e.g. pip install -U {dist.name if dist is not None else 'eventbus-' + scheme})"
    )
