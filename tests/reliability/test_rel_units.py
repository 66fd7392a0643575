"""The reliability harness itself, without brokers: ledger arithmetic and the TCP proxy."""

from __future__ import annotations

import asyncio

import pytest
from rel_ledger import (
    Effect,
    Invocation,
    Ledger,
    Published,
    group_ledger,
    late_in_order,
    overlapping,
)
from rel_ledger import redone_after as redone
from rel_proxy import TcpProxy

pytestmark = pytest.mark.reliability


def pub(i: int, key: str = "a", poison: bool = False) -> Published:
    return Published(id=f"m{i}", key=key, seq=i, poison=poison)


def inv(pos: int, i: int, key: str = "a", pid: int = 1, done: bool = True) -> Invocation:
    return Invocation(pos=pos, id=f"m{i}", key=key, seq=i, pid=pid, done=done)


def test_clean_run_balances() -> None:
    published = [pub(0), pub(1), pub(2, poison=True), pub(3)]
    g = group_ledger("alo", published, [inv(1, 0), inv(2, 1), inv(3, 3)], None, ["m2"])
    assert (g.handled, g.lost, g.duplicate_invocations, g.dead_lettered) == (3, 0, 0, 1)
    assert (g.order_violations, g.unexpected_dead_letters, g.unknown_ids) == (0, 0, 0)


def test_lost_means_neither_handled_nor_dead_lettered() -> None:
    published = [pub(0), pub(1), pub(2, poison=True)]
    # m1 invoked but its handler never returned (killed), m2 never dead-lettered.
    g = group_ledger("alo", published, [inv(1, 0), inv(2, 1, done=False)], None, [])
    assert g.lost == 2 and g.lost_sample == ["m1", "m2"]


def test_redelivery_is_a_duplicate_not_an_order_violation() -> None:
    # 0, 1, 2 handled; a crash redelivers 1 and 2; then 3.
    invocations = [inv(1, 0), inv(2, 1), inv(3, 2), inv(4, 1, pid=2), inv(5, 2, pid=2), inv(6, 3)]
    g = group_ledger("alo", [pub(i) for i in range(4)], invocations, None, [])
    assert g.duplicate_invocations == 2
    assert g.order_violations == 0


def test_first_invocation_out_of_order_is_a_violation() -> None:
    g = group_ledger("alo", [pub(0), pub(1)], [inv(1, 1), inv(2, 0)], None, [])
    assert g.order_violations == 1 and g.order_sample == ["a: 0 after 1"]


def test_keys_are_ordered_independently() -> None:
    count, _ = late_in_order([(1, "a", 5), (2, "b", 0), (3, "a", 6), (4, "b", 1)])
    assert count == 0


def test_effects_counted_and_ordered() -> None:
    published = [pub(0), pub(1), pub(2)]
    effects = [
        Effect(1, "m0", "a", 0),
        Effect(2, "m2", "a", 2),
        Effect(3, "m1", "a", 1),
        Effect(4, "m2", "a", 2),
    ]
    g = group_ledger("eo", published, [], effects, [])
    assert g.effects == 4 and g.duplicate_effects == 1
    assert g.order_violations == 1  # m1 after m2; the duplicate m2 is a duplicate, not late


def test_dead_letters_copies_and_unexpected() -> None:
    published = [pub(0), pub(1, poison=True)]
    g = group_ledger("alo", published, [inv(1, 0)], None, ["m1", "m1", "m0", "zzz"])
    assert (g.dead_lettered, g.dlq_copies, g.unexpected_dead_letters, g.unknown_ids) == (1, 4, 1, 1)


def test_problems_name_what_broke() -> None:
    g = group_ledger("eo", [pub(0), pub(1, poison=True)], [], [], [])
    ledger = Ledger("x", "memory", 2, 2, 1, 0, [g], extra={"must_be_zero:thing": 2})
    text = "\n".join(ledger.problems())
    assert "2 lost" in text and "0 dead-lettered, 1 poison" in text and "thing = 2" in text


def test_key_overlaps() -> None:
    def run(i: int, key: str, at: float, done_at: float | None) -> Invocation:
        return Invocation(
            pos=i, id=f"m{i}", key=key, seq=i, pid=i, done=True, at=at, done_at=done_at
        )

    # b overlaps a (same key); c runs after; d is another key; e starts during killed f: unknown
    runs = [
        run(1, "k", 0.0, 2.0),
        run(2, "k", 1.0, 3.0),
        run(3, "k", 3.5, 4.0),
        run(4, "x", 1.5, 1.6),
        run(5, "y", 0.0, None),
        run(6, "y", 0.5, 0.6),
    ]
    assert overlapping(runs) == 1


def test_redone_after_a_drain() -> None:
    invocations = [inv(1, 0, pid=7), inv(2, 1, pid=7), inv(3, 1, pid=8), inv(4, 2, pid=8)]
    assert redone(invocations, 7) == 1
    assert redone(invocations, 8) == 0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """The proxy resets connections: the client sees EOF or a reset."""
    try:
        return await asyncio.wait_for(reader.read(10), 5) == b""
    except ConnectionResetError:
        return True


async def test_proxy_forwards_and_cuts() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = TcpProxy("127.0.0.1", port)
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        assert proxy.open_connections == 1

        assert proxy.cut(refuse_for=0.5) == 1
        assert await _closed(reader)
        writer.close()

        # Refused while the outage lasts, accepted again after it.
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _closed(r2)
        w2.close()
        await asyncio.sleep(0.6)
        r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w3.write(b"pong")
        assert await asyncio.wait_for(r3.readexactly(4), 5) == b"pong"
        w3.close()
        assert proxy.refused == 1
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
