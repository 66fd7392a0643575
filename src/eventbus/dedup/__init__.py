"""Consumer-side deduplication stores. Redis and PostgreSQL drivers are imported on first use
(``pip install eventbus[redis]`` / ``eventbus[postgres]``)."""

from eventbus.dedup.base import BatchInboxStore, ClaimResult, DedupStore, InboxStore
from eventbus.dedup.memory import MemoryDedupStore
from eventbus.dedup.postgres import PostgresDedupStore
from eventbus.dedup.redis import RedisDedupStore
from eventbus.dedup.sqlite import SqliteDedupStore

__all__ = [
    "BatchInboxStore",
    "ClaimResult",
    "DedupStore",
    "InboxStore",
    "MemoryDedupStore",
    "PostgresDedupStore",
    "RedisDedupStore",
    "SqliteDedupStore",
]
