"""`RedisRateLimiter`: one rate limit shared by every process that consumes a subscription.

One key per limit holds the limit's theoretical arrival time (`eventbus.ratelimit.gcra`) in
microseconds of the Redis server's clock (``TIME``), so the workers' own clocks never matter.
Each turn is one Lua script, atomic on the server: read, reserve, write back with an expiry
just past the reservation, so an idle limit leaves nothing behind. If redis-py retries a call
whose reply was lost, a turn is reserved twice and one goes unused: the rate can only be lower.

redis-py is imported when a limiter is made, never by ``import eventbus``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventbus.errors import ConfigurationError
from eventbus.redis_common import RedisConnection

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisRateLimiter"]

# ARGV: microseconds per turn, tolerance in microseconds ((burst - 1) turns).
# Returns the microseconds until the reserved turn starts (0: now).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local start = tat - tonumber(ARGV[2])
if start < now then start = now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
           'PX', math.ceil((next_tat - now) / 1000) + 1000)
return math.ceil(start - now)
"""


class RedisRateLimiter:
    """Shares a `RateLimit` across processes through Redis: ``RateLimit(30, 5,
    shared=RedisRateLimiter("redis://127.0.0.1:6379/0"))`` holds for all workers together.

    ``url_or_client``: a ``redis://``/``rediss://``/``unix://`` URL (connected on first use,
    disconnected by `close`, which the bus calls when the subscription stops) or a
    ``redis.asyncio.Redis`` client you own (never closed here). The key is
    ``<prefix>:<topic>/<group>`` (or ``<prefix>:<queue>``), colons and ``%`` percent-escaped;
    ``key=`` names it instead, to share one limit between subscriptions. Every process sharing a
    key should use the same ``per_second`` and ``burst``.

    While Redis cannot be reached, handlers wait (no attempt is spent, nothing is nacked) and the
    turn is asked for again with backoff; the outage is logged once. Needs
    ``pip install 'eventbus[redis]'``. Task-safe (redis-py's connection pool).
    """

    def __init__(
        self,
        url_or_client: str | Redis,
        *,
        key: str | None = None,
        prefix: str = "eventbus:ratelimit",
    ) -> None:
        self._conn = RedisConnection(url_or_client, "RedisRateLimiter")
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigurationError(f"key must be a non-empty string or None, got {key!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(f"prefix must be a non-empty string, got {prefix!r}")
        self._key = key
        self._prefix = prefix
        self._script: AsyncScript | None = None

    def __repr__(self) -> str:
        key = f", key={self._key!r}" if self._key is not None else ""
        return f"RedisRateLimiter({self._conn.address!r}{key}, prefix={self._prefix!r})"

    def key_for(self, scope: str) -> str:
        """The Redis key of the limit of ``scope`` (for inspection and tests)."""
        if self._key is not None:
            return f"{self._prefix}:{self._key}"
        return f"{self._prefix}:{scope.replace('%', '%25').replace(':', '%3A')}"

    async def reserve(self, scope: str, per_second: float, burst: int) -> float:
        interval = 1_000_000 / per_second
        if self._script is None:
            self._script = self._conn.client().register_script(_RESERVE)
        with self._conn.errors():
            micros = await self._script(
                keys=[self.key_for(scope)], args=[repr(interval), repr((burst - 1) * interval)]
            )
        return max(0, int(micros)) / 1_000_000

    async def close(self) -> None:
        """Disconnect if the limiter made the client from a URL; the next `reserve` connects
        again. A client you passed stays open."""
        client = self._conn.detach()
        if client is not None:
            self._script = None
            await client.aclose()
