"""What the relay does with rows the broker refuses: set aside for good (too large, unroutable,
unreadable), or kept and retried (a failure that may pass), and a stop in the middle of a
batch. SQLite outboxes relayed through memory transports that fail on purpose."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import anyio
from outbox_helpers import Seen, eventually, order_violations

from eventbus import AuthorizationError, EventBus, Message, PublishError, UnroutableError
from eventbus.outbox import SqliteOutbox
from eventbus.transports.base import Destination
from eventbus.transports.memory import MemoryBroker, MemoryTransport


def _write(path: Path, outbox: SqliteOutbox, topic: str, rows: list[tuple[str, dict[str, object]]]):
    conn = sqlite3.connect(path)
    ids: list[str] = []

    async def write() -> list[str]:
        for key, payload in rows:
            ids.append(await outbox.publish(conn, topic, payload, key=key))
        conn.commit()
        conn.close()
        return ids

    return write()


class _Refusing(MemoryTransport):
    """Refuses what ``refuse`` says. An `AuthorizationError` fails the call. A refusal that
    may pass (an outage) fails the rest of the call too, as a lost connection fails every
    unconfirmed message; one that never will (unroutable) fails that message alone, as
    RabbitMQ returns one message."""

    def __init__(self, refuse: object) -> None:
        super().__init__(broker=MemoryBroker())
        self.refuse = refuse

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        failures: dict[int, BaseException] = {}
        for index, message in enumerate(messages):
            error = self.refuse(message)  # type: ignore[operator]
            if isinstance(error, AuthorizationError):
                raise error  # as Kafka raises a refused topic creation, before any message
            if error is not None and not isinstance(error, UnroutableError):
                failures.update(dict.fromkeys(range(index, len(messages)), error))
                break
            if error is not None:
                failures[index] = error
            else:
                await super().publish(to, [message])
        if failures:
            raise PublishError("refused", failures)


async def test_a_row_too_large_is_set_aside_and_holds_back_nothing(
    sqlite_path: Path, name: str
) -> None:
    outbox = SqliteOutbox(sqlite_path, table="outbox")
    big = "x" * 3000
    rows = [("a", {"seq": 0}), ("a", {"seq": 1, "pad": big}), ("a", {"seq": 2}), ("b", {"seq": 0})]
    await _write(sqlite_path, outbox, name, rows)

    class Small(MemoryTransport):
        capabilities = MemoryTransport.capabilities.__class__(durable=False, max_message_size=1000)

    bus = EventBus(transport=Small(broker=MemoryBroker()), outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    async with bus:
        await seen.wait_for(3)
        await eventually(lambda: outbox_failed(sqlite_path) == 1)
        backlog = await outbox.backlog()
    assert sorted((k, p["seq"]) for k, p, _ in seen.items) == [("a", 0), ("a", 2), ("b", 0)]
    assert order_violations(seen.items) == 0
    assert (backlog.unsent, backlog.failed) == (0, 1)
    [(why,)] = sqlite3.connect(sqlite_path).execute(
        "SELECT failed FROM outbox WHERE failed IS NOT NULL"
    )
    assert why.startswith("MessageTooLargeError") and "1000" in why


def outbox_failed(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(
            conn.execute("SELECT count(*) FROM outbox WHERE failed IS NOT NULL").fetchone()[0]
        )


async def test_unroutable_and_unreadable_rows_are_set_aside(sqlite_path: Path, name: str) -> None:
    outbox = SqliteOutbox(sqlite_path, table="outbox")
    await _write(sqlite_path, outbox, name, [("k", {"seq": i}) for i in range(4)])
    with sqlite3.connect(sqlite_path) as conn:  # stored by something else, not a JSON object
        conn.execute("UPDATE outbox SET headers = '\"oops\"' WHERE id = 2")
    transport = _Refusing(
        lambda m: UnroutableError("no queue bound", {}) if m.body == b'{"seq":3}' else None
    )
    bus = EventBus(transport=transport, outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    async with bus:
        await seen.wait_for(2)
        await eventually(lambda: outbox_failed(sqlite_path) == 2)
    assert [p["seq"] for _, p, _ in seen.items] == [0, 2]
    reasons = dict(
        sqlite3.connect(sqlite_path).execute(
            "SELECT id, failed FROM outbox WHERE failed IS NOT NULL"
        )
    )
    assert reasons[2].startswith("unreadable row") and reasons[4].startswith("UnroutableError")


async def test_a_failure_that_may_pass_keeps_the_rows_in_order_until_it_does(
    sqlite_path: Path, name: str
) -> None:
    """Message 5 of 10 (one key) is refused three times as a broker would refuse during an
    outage: the confirmed ones before it are marked, nothing after it is delivered before it,
    nothing is lost, and the bus keeps running (an authorization error included)."""
    outbox = SqliteOutbox(sqlite_path, table="outbox")
    await _write(sqlite_path, outbox, name, [("k", {"seq": i}) for i in range(10)])
    refusals = [ConnectionError("broker restarting"), AuthorizationError("no write access")]
    refusals.append(ConnectionError("still restarting"))

    def refuse(message: Message) -> BaseException | None:
        if message.body == b'{"seq":5}' and refusals:
            return refusals.pop(0)
        return None

    transport = _Refusing(refuse)
    bus = EventBus(transport=transport, outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    async with bus:
        await seen.wait_for(10, within=60)
        await anyio.sleep(0.3)
        relayed = bus.outbox_relay.stats["outbox"] if bus.outbox_relay else None
    first = seen.first_deliveries()
    assert [p["seq"] for _, p, _ in first] == list(range(10))
    assert order_violations(seen.items) == 0
    assert relayed is not None and relayed.failures == 3 and relayed.relayed == 10
    assert outbox_failed(sqlite_path) == 0


async def test_a_stop_by_cancellation_finishes_the_batch_in_hand(
    sqlite_path: Path, name: str
) -> None:
    """The way ``eventbus run`` stops on SIGTERM: the scope around the bus is cancelled. The
    relay still publishes and marks its batch, so a restart sends nothing twice."""
    outbox = SqliteOutbox(sqlite_path, table="outbox")
    await _write(sqlite_path, outbox, name, [(f"k{i}", {"seq": i}) for i in range(20)])
    entered = anyio.Event()

    class Slow(MemoryTransport):
        async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
            if to.name == name:
                entered.set()
                await anyio.sleep(0.5)  # the batch is in hand when the stop comes
            await super().publish(to, messages)

    broker = MemoryBroker()
    bus = EventBus(transport=Slow(broker=broker), outbox=outbox, graceful_timeout=10)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(bus.run)
            await entered.wait()
            scope.cancel()
    published = [m.id for m in broker.published(name)]
    with sqlite3.connect(sqlite_path) as conn:
        marked = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()
    assert len(published) == 20 and marked == (20,), "published and marked: nothing to redo"


async def test_a_relay_that_fails_between_publish_and_mark_sends_the_same_messages_again(
    sqlite_path: Path, name: str
) -> None:
    """The broker confirmed, then the relay failed before marking (a crash would do the
    same): the rows go out again, as the same messages (ids), and none is lost."""
    outbox = SqliteOutbox(sqlite_path, table="outbox")
    ids = await _write(sqlite_path, outbox, name, [("k", {"seq": i}) for i in range(5)])
    failed_once: list[bool] = []

    class ConfirmsThenFails(MemoryTransport):
        async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
            await super().publish(to, messages)
            if to.name == name and not failed_once:
                failed_once.append(True)
                raise ConnectionError("lost after the confirmation")

    bus = EventBus(transport=ConfirmsThenFails(broker=MemoryBroker()), outbox=outbox)
    seen = Seen()
    seen.subscribe(bus, name)
    async with bus:
        await seen.wait_for(10)
    delivered_ids = [message_id for _, _, message_id in seen.items]
    assert sorted(delivered_ids) == sorted(ids * 2), "each message twice, under its own id"
    assert [p["seq"] for _, p, _ in seen.first_deliveries()] == list(range(5))
