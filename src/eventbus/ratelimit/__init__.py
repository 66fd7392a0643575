"""Rate limits per handler (DESIGN 11): `RateLimit`, local or shared through `RedisRateLimiter`."""

from eventbus.ratelimit.config import RateLimit, SharedRateLimiter
from eventbus.ratelimit.redis import RedisRateLimiter

__all__ = ["RateLimit", "RedisRateLimiter", "SharedRateLimiter"]
