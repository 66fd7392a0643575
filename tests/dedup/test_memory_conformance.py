"""The reference store passes the suite: the suite checks the protocol, not one backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventbus.dedup.memory import MemoryDedupStore
from eventbus.testing.dedup_conformance import DedupStoreConformance


class TestMemoryDedupStore(DedupStoreConformance):
    validates_durations = False

    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryDedupStore]:
        store = MemoryDedupStore()
        yield store
        await store.close()
