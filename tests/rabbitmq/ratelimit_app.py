"""A worker app for the shared rate limit test: ``python -m eventbus run ratelimit_app:bus``.

Consumes ``RL_QUEUE`` under ``RateLimit(RL_RATE, RL_BURST, shared=RedisRateLimiter(RL_REDIS,
prefix=RL_PREFIX))`` and appends ``<time.time()> <n>`` per handled message to its own file,
``RL_OUT/<pid>.txt``. The transport URL comes from ``EVENTBUS_URL`` (never a command line).
"""

import os
import time
from pathlib import Path

from eventbus import EventBus, RateLimit, RedisRateLimiter

bus = EventBus()
_out = Path(os.environ["RL_OUT"]) / f"{os.getpid()}.txt"

_limit = RateLimit(
    float(os.environ["RL_RATE"]),
    int(os.environ["RL_BURST"]),
    shared=RedisRateLimiter(os.environ["RL_REDIS"], prefix=os.environ["RL_PREFIX"]),
)


@bus.consume(os.environ["RL_QUEUE"], concurrency=2, rate_limit=_limit)
async def handle(job: dict[str, int]) -> None:
    with _out.open("a") as out:
        out.write(f"{time.time()} {job['n']}\n")
