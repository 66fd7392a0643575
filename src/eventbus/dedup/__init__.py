"""Consumer-side deduplication stores."""

from eventbus.dedup.base import ClaimResult, DedupStore, InboxStore
from eventbus.dedup.memory import MemoryDedupStore

__all__ = ["ClaimResult", "DedupStore", "InboxStore", "MemoryDedupStore"]
