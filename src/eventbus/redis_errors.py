"""What the Redis-backed parts (the dedup store, the shared rate limiter) say about Redis:
its address without credentials, and its connection errors as `BrokerUnavailableError`.

redis-py's connection errors are not builtin ``ConnectionError``s, so the core's outage
handling (wait, spend no attempt) would not recognise them untranslated. ``redis`` is imported
only when an error is translated: a process that uses neither part never imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from eventbus.errors import BrokerUnavailableError

__all__ = ["redis_address", "translated_errors"]


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
