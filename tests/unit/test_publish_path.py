"""The publish path's cheap parts: message ids (unique UUID strings without a syscall per
message, also across a fork) and `publish_many` building its messages (DESIGN 2)."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable

import pytest

from eventbus import ConfigurationError, EventBus
from eventbus import message as message_module
from eventbus.message import new_message_id
from eventbus.testing import MemoryBroker


def test_ids_are_unique_version_4_uuid_strings() -> None:
    ids = [new_message_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:10] + ids[-10:]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, written to the parent
        try:
            os.write(write, "\n".join(new_message_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split("\n")
    os.waitpid(pid, 0)
    parent = [new_message_id() for _ in range(100)]
    assert len(child) == 100
    assert not set(child) & set(parent)
    assert child[0][:23] != parent[0][:23], "the child draws its own random prefix"


def test_the_prefix_is_drawn_again_when_the_counter_wraps() -> None:
    ids = message_module._ids
    ids.counter = itertools.count(message_module._COUNTER_LIMIT - 1)
    last, wrapped = new_message_id(), new_message_id()
    assert last.endswith("-ffffffffffff")
    assert wrapped[:23] != last[:23], "a new prefix after a wrap"
    assert uuid.UUID(wrapped).version == 4


async def test_publish_many_shares_one_timestamp_and_checks_headers_once(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    async with make_bus() as bus:
        ids = await bus.publish_many(
            "orders", [b"a", "b", {"c": 1}], keys=["k1", None, "k1"], headers={"tenant": "t"}
        )
        with pytest.raises(ConfigurationError, match="reserved"):
            await bus.publish_many("orders", [b"x"], headers={"eventbus-attempt": "1"})
        with pytest.raises(ConfigurationError, match="str to str"):
            await bus.publish_many("orders", [b"x"], headers={"n": 1})  # type: ignore[dict-item]
    published = broker.published("orders")
    assert [m.id for m in published] == ids and len(set(ids)) == 3
    assert [m.key for m in published] == ["k1", None, "k1"]
    assert [m.body for m in published] == [b"a", b"b", b'{"c":1}']
    assert len({m.timestamp for m in published}) == 1
    assert all(m.headers == {"tenant": "t"} for m in published)
    # Each message owns its headers: changing one (a transport stamping a retry) is not seen
    # by the others.
    assert len({id(m.headers) for m in published}) == 3


async def test_names_checked_once_still_refuse_bad_ones(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    """A bus keeps the `Destination` of each name it published to: later publishes to it reuse
    it, and names it refused, or that are not text, are refused every time."""
    async with make_bus() as bus:
        for _ in range(2):
            await bus.publish("orders", b"a")
            await bus.send("jobs", b"b")
            for bad in ("bad topic", "", 7, ["orders"], None):
                with pytest.raises(ConfigurationError, match="invalid topic name"):
                    await bus.publish(bad, b"x")  # type: ignore[arg-type]
                with pytest.raises(ConfigurationError, match="invalid queue name"):
                    await bus.send(bad, b"x")  # type: ignore[arg-type]
        await bus.publish("orders", b"later", delay=0.01)
    assert [m.body for m in broker.published("orders")][:2] == [b"a", b"a"]
    assert bus._destinations["topic"]["orders"].not_before is None
    assert set(bus._destinations["topic"]) == {"orders"}
    assert set(bus._destinations["queue"]) == {"jobs"}
