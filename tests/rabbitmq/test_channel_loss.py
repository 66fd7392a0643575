"""A channel lost under a running handler, end to end through the core (DESIGN 8, ownership).

A handler runs long on a delivery; the broker closes its consumer connection (``rabbitmqctl
close_connection``), which requeues the delivery for the group's other subscriber. The first
handler must be cancelled as soon as this process learns of the loss, and the message handled
to completion exactly once, by the other subscriber, with per-key order kept and nothing lost.

The one window this cannot close: between the broker requeueing the message (and handing it to
the other consumer) and this process learning of the loss, both may run it. The tests measure
it and print it (``-s``).
"""

import itertools
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import pytest
from rabbit_helpers import close_connections, unique_suffix, with_options

from eventbus import EventBus, Message

pytestmark = [
    pytest.mark.amqp,
    pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl"),
]

PROMPT = 2.0
"""Seconds from starting ``rabbitmqctl close_connection`` (an Erlang VM start included, about
half a second here) to the handler's cancellation."""


@dataclass
class Record:
    worker: str
    id: str
    key: str
    seq: int
    start: float
    end: float | None = None  # None: still running
    cancelled: bool = False


class Workers:
    """Handler bookkeeping shared by the buses of one test."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.trap_armed = True  # the first message "a" handles runs until cancelled
        self.trapped: Record | None = None
        self.trapped_event = anyio.Event()
        self.cancelled_event = anyio.Event()
        self.done = 0

    def handler(self, worker: str) -> Callable[[Message], object]:
        async def handle(message: Message) -> None:
            record = Record(
                worker, message.id, message.key or "", int(message.body), time.monotonic()
            )
            self.records.append(record)
            trapped = worker == "a" and self.trap_armed
            if trapped:
                self.trap_armed = False
                self.trapped = record
                self.trapped_event.set()
            try:
                await anyio.sleep(3600 if trapped else 0.01)
            except BaseException:  # CancelledError: what the core does on a lost delivery
                record.end, record.cancelled = time.monotonic(), True
                if trapped:
                    self.cancelled_event.set()
                raise
            record.end = time.monotonic()
            self.done += 1

        return handle

    def completed(self) -> list[Record]:
        return [r for r in self.records if r.end is not None and not r.cancelled]

    async def wait_completed(self, count: int, within: float = 60) -> None:
        with anyio.fail_after(within):
            while len({r.id for r in self.completed()}) < count:  # noqa: ASYNC110
                await anyio.sleep(0.05)


def check_keys(workers: Workers, keys: int, rounds: int) -> None:
    """Every message completed exactly once; per key, in publish order, one at a time (a
    cancelled run counts until its cancellation)."""
    completed = workers.completed()
    ids = [r.id for r in completed]
    assert len(ids) == len(set(ids)) == keys * rounds, "each message completed exactly once"
    by_key: dict[str, list[Record]] = defaultdict(list)
    for record in completed:
        by_key[record.key].append(record)
    for key, records in by_key.items():
        records.sort(key=lambda r: r.start)
        runs = [(r.worker, r.seq, round(r.start, 3)) for r in workers.records if r.key == key]
        assert [r.seq for r in records] == list(range(rounds)), f"{key}: in publish order {runs}"


def overlaps(workers: Workers) -> list[tuple[str, str, float]]:
    """(key, message id, seconds) wherever a run of a key started before the previous run of
    that key ended, in whichever worker; a cancelled run ends at its cancellation."""
    by_key: dict[str, list[Record]] = defaultdict(list)
    for record in workers.records:
        by_key[record.key].append(record)
    found = []
    for key, records in by_key.items():
        records.sort(key=lambda r: r.start)
        for before, after in itertools.pairwise(records):
            assert before.end is not None, f"{key}: a run that never ended"
            if after.start < before.end:
                found.append((key, after.id, before.end - after.start))
    return found


def overlap(workers: Workers) -> float:
    """Seconds during which the trapped message ran in both workers (negative: the gap)."""
    trapped = workers.trapped
    assert trapped is not None and trapped.cancelled and trapped.end is not None
    (rerun,) = [r for r in workers.completed() if r.id == trapped.id]
    return trapped.end - rerun.start


async def publish(bus: EventBus, topic: str, keys: int, rounds: int) -> None:
    for seq in range(rounds):
        for k in range(keys):
            await bus.publish(topic, str(seq).encode(), key=f"key-{k}", message_id=f"{k}-{seq}")


async def test_a_lost_connection_cancels_the_handler_and_the_partition_moves_on(
    amqp_url: str,
) -> None:
    """Partitioned group, two workers owning a partition each. Worker a's handler hangs on the
    first message it gets; a is being shut down (a rolling deploy), waiting for that handler
    (graceful timeout 60 s), when the broker closes a's consumer connection. a's handler is
    cancelled at once, as a no longer owns the message; b takes the partition over and handles
    the message and the rest of its key, in order, each message exactly once.

    (a stopping first only keeps a from winning its partition back when it reconnects, which a
    running worker may do; the cancellation comes from the loss, long before the timeout.)"""
    suffix = unique_suffix()
    topic = f"rmq-loss-{suffix}"
    options = "partitions=2&queue_type=quorum"
    workers = Workers()
    buses = {
        worker: EventBus(
            with_options(amqp_url, f"{options}&name={worker}-{suffix}"), graceful_timeout=60
        )
        for worker in ("a", "b")
    }
    for worker, bus in buses.items():
        bus.subscribe(topic, group="g", concurrency=4)(workers.handler(worker))
    publisher = EventBus(amqp_url)
    keys, rounds = 8, 10
    a_live, a_stop, a_gone = anyio.Event(), anyio.Event(), anyio.Event()

    async def run_a() -> None:
        async with buses["a"]:  # live once b handed it its share
            a_live.set()
            await a_stop.wait()
        a_gone.set()

    async with publisher, buses["b"], anyio.create_task_group() as tasks:
        tasks.start_soon(run_a)
        with anyio.fail_after(30):
            await a_live.wait()
        await publish(publisher, topic, keys, rounds)
        with anyio.fail_after(30):
            await workers.trapped_event.wait()
        await anyio.sleep(0.5)  # a handles the other keys of its partition meanwhile
        a_stop.set()  # a stops fetching and waits for its handlers
        await anyio.sleep(0.5)
        assert not a_gone.is_set(), "a waits for the hanging handler"

        killed_at = time.monotonic()
        closed = await anyio.to_thread.run_sync(close_connections, f"a-{suffix} consumer")
        assert closed == 1
        with anyio.fail_after(PROMPT):
            await workers.cancelled_event.wait()
        cancelled_after = time.monotonic() - killed_at
        with anyio.fail_after(10):
            await a_gone.wait()  # nothing left to wait for: the message is b's now
        await workers.wait_completed(keys * rounds)

    check_keys(workers, keys, rounds)
    trapped = workers.trapped
    assert trapped is not None
    (rerun,) = [r for r in workers.completed() if r.id == trapped.id]
    assert rerun.worker == "b", "the other subscriber handled it"
    assert rerun.start > trapped.start
    window = overlap(workers)
    print(
        f"\nhandler cancelled {cancelled_after:.3f} s after rabbitmqctl started; "
        f"b started the message {-window:.3f} s after a's handler ended "
        f"({'overlap' if window > 0 else 'no overlap'})"
    )
    assert window <= 0, "b took the partition only after a's handler was cancelled"
    assert overlaps(workers) == [], "no key ran in two places, nor twice at once in one"


async def test_a_lost_connection_on_a_shared_queue_measures_the_window(amqp_url: str) -> None:
    """Competing consumers on one queue: the broker hands the requeued message to b at once,
    so this measures the window between the requeue and worker a learning of the loss."""
    suffix = unique_suffix()
    queue = f"rmq-loss-q-{suffix}"
    workers = Workers()
    a = EventBus(with_options(amqp_url, f"name=a-{suffix}"))
    b = EventBus(with_options(amqp_url, f"name=b-{suffix}"))
    for worker, bus in (("a", a), ("b", b)):
        bus.consume(queue)(workers.handler(worker))
    publisher = EventBus(amqp_url)

    async with publisher, a:
        await publisher.send(queue, b"0", key="key-0", message_id="0-0")
        with anyio.fail_after(30):
            await workers.trapped_event.wait()  # a holds it; b is not even running yet
        async with b:
            killed_at = time.monotonic()
            closed = await anyio.to_thread.run_sync(close_connections, f"a-{suffix} consumer")
            assert closed == 1
            with anyio.fail_after(PROMPT):
                await workers.cancelled_event.wait()
            cancelled_after = time.monotonic() - killed_at
            await workers.wait_completed(1)

    check_keys(workers, 1, 1)
    window = overlap(workers)
    print(
        f"\nhandler cancelled {cancelled_after:.3f} s after rabbitmqctl started; "
        f"both ran the message for {max(window, 0) * 1000:.1f} ms "
        f"(requeue-to-notice window; negative gap {min(window, 0) * 1000:.1f} ms)"
    )
    assert window < 0.5, "the window is the broker-to-client notice, not more"
    assert [(key, mid) for key, mid, _ in overlaps(workers)] == (
        [("key-0", "0-0")] if window > 0 else []
    )
