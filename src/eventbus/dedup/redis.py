"""A dedup store in Redis: shared by workers on any number of hosts; keys expire natively."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from eventbus.dedup._validate import check_seconds
from eventbus.dedup.base import ClaimResult
from eventbus.errors import ConfigurationError
from eventbus.redis_common import RedisConnection

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisDedupStore"]

# One key per (scope, key); its value says what it is, its PX expiry is the lease or the TTL:
#   "c:<owner>"  claimed by <owner> until the key expires (the lease)
#   "d:<owner>"  done (completed by <owner>) until the key expires (the TTL)
# Every state change is one command or one Lua script, so each is atomic on the server, and
# each is idempotent (an owner claiming again gets its claim back, with the lease renewed), so
# redis-py may safely retry one whose reply was lost.

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and v ~= 'c:' .. ARGV[1] then
  if string.sub(v, 1, 2) == 'd:' then return 'done' end
  return 'busy'
end
redis.call('SET', KEYS[1], 'c:' .. ARGV[1], 'PX', ARGV[2])
return 'claimed'
"""

# Compare-and-delete: never drops another owner's claim, nor a completed key.
_RELEASE = """
if redis.call('GET', KEYS[1]) == 'c:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_RESULTS = {
    b"claimed": ClaimResult.CLAIMED,
    b"done": ClaimResult.DONE,
    b"busy": ClaimResult.BUSY,
    "claimed": ClaimResult.CLAIMED,
    "done": ClaimResult.DONE,
    "busy": ClaimResult.BUSY,
}


class RedisDedupStore:
    """Remembers processed keys in Redis as ``<prefix>:<scope>:<key>`` with a PX expiry.

    ``url_or_client`` is a ``redis://``/``rediss://``/``unix://`` URL (the store connects on
    first use and `close()` disconnects) or a ``redis.asyncio.Redis`` client you own (the store
    never closes it). A claim's lease and a completed key's TTL are Redis expiries, so Redis
    itself cleans up: nothing grows without bound and no sweeper is needed. Colons and ``%`` in
    the scope are percent-escaped so that scopes cannot collide.

    Needs ``pip install 'eventbus[redis]'``. Task-safe (redis-py's connection pool).
    With Redis replication, a failover may lose the last writes (Redis replicates
    asynchronously): a claim or completion that was lost lets that message be processed again.
    """

    def __init__(self, url_or_client: str | Redis, *, prefix: str = "eventbus:dedup") -> None:
        self._conn = RedisConnection(url_or_client, "RedisDedupStore")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(f"prefix must be a non-empty string, got {prefix!r}")
        self._prefix = prefix
        self._claim_script: AsyncScript | None = None
        self._release_script: AsyncScript | None = None

    def __repr__(self) -> str:
        return f"RedisDedupStore({self._conn.address!r}, prefix={self._prefix!r})"

    def key_for(self, scope: str, key: str) -> str:
        """The Redis key that holds ``key``'s record in ``scope`` (for inspection and tests)."""
        escaped = scope.replace("%", "%25").replace(":", "%3A")
        return f"{self._prefix}:{escaped}:{key}"

    async def open(self) -> None:
        """Connect now (and check that Redis answers) rather than on first use."""
        with self._conn.errors():
            await self._conn.client().ping()

    async def claim(self, scope: str, key: str, *, owner: str, lease: float) -> ClaimResult:
        lease_ms = _millis(check_seconds("lease", lease))
        if self._claim_script is None:
            self._claim_script = self._conn.client().register_script(_CLAIM)
        with self._conn.errors():
            reply = await self._claim_script(
                keys=[self.key_for(scope, key)], args=[owner, lease_ms]
            )
        return _RESULTS[reply]

    async def complete(self, scope: str, key: str, *, owner: str, ttl: float) -> None:
        # Unconditional (DedupStore.complete): the effect happened even if the lease ran out.
        ttl_ms = _millis(check_seconds("ttl", ttl))
        with self._conn.errors():
            await self._conn.client().set(self.key_for(scope, key), "d:" + owner, px=ttl_ms)

    async def release(self, scope: str, key: str, *, owner: str) -> None:
        if self._release_script is None:
            self._release_script = self._conn.client().register_script(_RELEASE)
        with self._conn.errors():
            await self._release_script(keys=[self.key_for(scope, key)], args=[owner])

    async def purge_expired(self, *, limit: int | None = None) -> int:
        """Always 0: Redis deletes expired keys itself."""
        return 0

    async def close(self) -> None:
        """Disconnect if the store made the client from a URL; a client you passed stays open."""
        client = self._conn.detach()
        if client is not None:
            self._claim_script = self._release_script = None
            await client.aclose()


def _millis(seconds: float) -> int:
    # Round up: a lease never ends before it was asked to; Redis needs at least 1 ms.
    return max(1, math.ceil(seconds * 1000))
