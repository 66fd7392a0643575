"""What the Redis-backed parts (the dedup store, the shared rate limiter) share: how they take
a URL or a client, how they connect, their address without credentials, and their connection
errors as `BrokerUnavailableError`.

redis-py's connection errors are not builtin ``ConnectionError``s, so the core's outage
handling (wait, spend no attempt) would not recognise them untranslated. ``redis`` is imported
only by these parts: a process that uses neither never imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import ModuleType
from typing import TYPE_CHECKING

from eventbus.errors import BrokerUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisConnection", "redis_address", "translated_errors"]

_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_target(url_or_client: object, what: str) -> tuple[str | None, Redis | None]:
    """``(url, None)`` for a Redis URL (redis-py checked to be installed: a missing extra fails
    at construction, not on the first message), ``(None, client)`` for a client the caller
    owns; `ConfigurationError` for anything else. ``what`` names the part, for errors."""
    if isinstance(url_or_client, str):
        if not url_or_client.startswith(_SCHEMES):
            raise ConfigurationError(
                "url_or_client must be a redis://, rediss:// or unix:// URL (e.g. "
                "'redis://127.0.0.1:6379/0') or a redis.asyncio.Redis, got a string starting "
                f"{url_or_client.partition('://')[0][:20]!r}"
            )
        _redis_module(what)
        return url_or_client, None
    if hasattr(url_or_client, "evalsha") and hasattr(url_or_client, "register_script"):
        return None, url_or_client  # type: ignore[return-value]
    raise ConfigurationError(
        "url_or_client must be a Redis URL or a redis.asyncio.Redis client, "
        f"got {type(url_or_client).__name__}"
    )


def connect(url: str, what: str) -> Redis:
    """A client for ``url`` (connections open on first use)."""
    client: Redis = _redis_module(what).from_url(url)
    return client


def _redis_module(what: str) -> ModuleType:
    try:
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(f"{what} needs redis-py: pip install 'eventbus[redis]'") from exc
    return redis.asyncio


def redis_address(url: str | None, client: object) -> str:
    """The URL without its password (the client's repr when built from a client)."""
    if url is None:
        return repr(client)
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"  # without credentials


@contextmanager
def translated_errors(address: str) -> Iterator[None]:
    import redis.exceptions

    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise BrokerUnavailableError(address, str(exc)) from exc


class RedisConnection:
    """The client of a Redis-backed part: made from a URL on first use (and closed by
    `close`), or one the caller owns (never closed here); with its address and errors."""

    def __init__(self, url_or_client: object, what: str) -> None:
        self._what = what
        self._url, self._client = redis_target(url_or_client, what)

    @property
    def address(self) -> str:
        return redis_address(self._url, self._client)

    def client(self) -> Redis:
        if self._client is None:
            # Only one made from a URL gets here (one given a client always has it).
            assert self._url is not None
            self._client = connect(self._url, self._what)
        return self._client

    def errors(self) -> AbstractContextManager[None]:
        return translated_errors(self.address)

    def detach(self) -> Redis | None:
        """Forget a client made from the URL and return it for the caller to close (the next
        use connects again); None when there is none, or for a client the caller owns."""
        if self._url is None or self._client is None:
            return None
        client, self._client = self._client, None
        return client
