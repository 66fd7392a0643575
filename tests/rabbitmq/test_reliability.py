"""Fault and scale scenarios on a real RabbitMQ (issue 5): several worker processes on a
partitioned group, connections killed by the broker, a broker restart. Slow; marked
``reliability``."""

import itertools
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from eventbus_rabbitmq import RabbitMQTransport
from rabbit_helpers import drain_partitions, unique_suffix, with_options

from eventbus import EventBus, Message
from eventbus.transports.base import Destination

pytestmark = [pytest.mark.amqp, pytest.mark.reliability, pytest.mark.timeout(600)]

WORKER = Path(__file__).with_name("partition_worker.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[str, str, str, int], list[Path]]]:
    """Start worker processes; terminated (SIGTERM, then kill) after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(url: str, topic: str, group: str, count: int) -> list[Path]:
        outs, started = [], []
        for _ in range(count):
            out = tmp_path / f"worker-{len(procs)}.tsv"
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), url, topic, group, str(out)],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            started.append(proc)
            outs.append(out)
        for proc in started:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until the worker subscribed (or died)
            assert line.strip() == "ready", f"worker did not start (exit {proc.poll()})"
        return outs

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def read(outs: list[Path]) -> dict[int, list[tuple[str, int, float, float]]]:
    records: dict[int, list[tuple[str, int, float, float]]] = {}
    for n, out in enumerate(outs):
        rows = [line.split("\t") for line in out.read_text().splitlines()] if out.exists() else []
        records[n] = [(k, int(s), float(a), float(b)) for k, s, a, b in rows]
    return records


async def test_partitioned_group_over_three_processes_keeps_per_key_order(
    amqp_url: str, workers: Callable[[str, str, str, int], list[Path]], tmp_path: Path
) -> None:
    name = unique_suffix()
    topic, group = f"rmq-parts-{name}", "workers"
    url = with_options(amqp_url, "partitions=6&queue_type=quorum&prefetch=20")
    outs = await anyio.to_thread.run_sync(workers, url, topic, group, 3)

    keys, rounds = 24, 25
    await publish_rounds(amqp_url, topic, keys, rounds)
    records = await wait_handled(outs, keys * rounds)
    check_order(records, keys, rounds)
    busy = [worker for worker, rows in records.items() if rows]
    print("handled per worker:", {w: len(rows) for w, rows in records.items()})
    assert len(busy) >= 2, f"keys spread over several processes (busy: {busy})"


def check_order(
    records: dict[int, list[tuple[str, int, float, float]]], keys: int, rounds: int
) -> None:
    """Every message handled exactly once; per key, each one started after the previous ended,
    whichever process handled it."""
    by_key: dict[str, list[tuple[int, float, float, int]]] = defaultdict(list)
    for worker, rows in records.items():
        for key, seq, start, end in rows:
            by_key[key].append((seq, start, end, worker))
    assert len(by_key) == keys
    for key, handled in by_key.items():
        handled.sort(key=lambda row: row[1])  # by start time, across processes
        assert [row[0] for row in handled] == list(range(rounds)), f"{key}: exactly once, in order"
        for before, after in itertools.pairwise(handled):
            assert after[1] >= before[2], f"{key}: {after[0]} started before {before[0]} ended"


async def publish_rounds(url: str, topic: str, keys: int, rounds: int, pause: float = 0.0) -> None:
    publisher = RabbitMQTransport(url)
    await publisher.connect()
    try:
        for seq in range(rounds):
            batch = [
                Message(id=f"{k}-{seq}", topic=topic, body=str(seq).encode(), key=f"key-{k}")
                for k in range(keys)
            ]
            await publisher.publish(Destination(topic), batch)
            await anyio.sleep(pause)
    finally:
        await publisher.close()


async def wait_handled(
    outs: list[Path], count: int
) -> dict[int, list[tuple[str, int, float, float]]]:
    with anyio.fail_after(180):
        # Polling files that other processes write: there is no event to wait on.
        while sum(len(r) for r in read(outs).values()) < count:  # noqa: ASYNC110
            await anyio.sleep(0.2)
    return read(outs)


async def test_workers_joining_mid_stream_take_over_partitions_in_order(
    amqp_url: str, workers: Callable[[str, str, str, int], list[Path]], tmp_path: Path
) -> None:
    """Partitions are handed over while messages of their keys are in flight: the new owner
    must not start a key's next message before the old owner finished the previous one."""
    name = unique_suffix()
    topic, group = f"rmq-join-{name}", "workers"
    url = with_options(amqp_url, "partitions=4&prefetch=20")
    outs = await anyio.to_thread.run_sync(workers, url, topic, group, 1)
    keys, rounds = 16, 120
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(publish_rounds, amqp_url, topic, keys, rounds, 0.02)
        outs += await anyio.to_thread.run_sync(workers, url, topic, group, 1)
        outs += await anyio.to_thread.run_sync(workers, url, topic, group, 1)
    records = await wait_handled(outs, keys * rounds)
    check_order(records, keys, rounds)
    print("handled per worker:", {w: len(rows) for w, rows in records.items()})
    assert sum(1 for rows in records.values() if rows) >= 2, "the joiners got partitions"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def restart_broker() -> None:
    """``scripts/brokers restart rabbitmq``. The broker is shared with other test runs on this
    machine, so if the restart reports a failure, make sure it is up again before judging."""
    script = str(REPO / "scripts" / "brokers")
    restart = subprocess.run([script, "restart", "rabbitmq"], capture_output=True, timeout=300)
    if restart.returncode == 0:
        return
    start = subprocess.run([script, "start", "rabbitmq"], capture_output=True, timeout=300)
    assert start.returncode == 0, (
        f"broker restart failed:\n{restart.stderr.decode()}\nthen start:\n{start.stderr.decode()}"
    )


@pytest.mark.parametrize(
    "options",
    ["queue_type=classic", "queue_type=quorum", "queue_type=quorum&partitions=3"],
    ids=["classic", "quorum", "quorum-partitioned"],
)
async def test_connections_closed_then_broker_restart_loses_nothing(
    amqp_url: str, tmp_path: Path, options: str
) -> None:
    if "127.0.0.1" not in amqp_url or not os.access(REPO / "scripts" / "brokers", os.X_OK):
        pytest.skip("needs the local broker from scripts/brokers")
    name = unique_suffix()
    topic = f"rmq-chaos-{name}"
    url = with_options(amqp_url, f"{options}&publish_timeout=120")
    handled: dict[str, int] = defaultdict(int)
    confirmed: list[str] = []
    total = 400

    consumer = EventBus(url)

    @consumer.subscribe(topic, group="g", concurrency=4)
    async def handle(message: Message) -> None:
        await anyio.sleep(0.005)  # so that some are in flight when the connection dies
        handled[message.id] += 1

    publisher = EventBus(url)

    async def publish(first: int, last: int) -> None:
        for i in range(first, last):
            confirmed.append(await publisher.publish(topic, {"i": i}, message_id=f"m{i}"))

    async with consumer, publisher:
        await publish(0, 100)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish, 100, 250)
            await anyio.to_thread.run_sync(rabbitmqctl, "close_all_connections", "chaos test")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish, 250, total)
            await anyio.to_thread.run_sync(restart_broker)
        with anyio.fail_after(240):
            while not set(confirmed) <= set(handled):  # noqa: ASYNC110 - simple bounded poll
                await anyio.sleep(0.2)
    assert len(confirmed) == total
    missing = set(confirmed) - set(handled)
    assert not missing, f"lost {len(missing)} confirmed messages"


async def test_partitioned_groups_keep_each_key_in_its_partition_across_a_broker_restart(
    amqp_url: str,
) -> None:
    """A key must land in the same partition queue after RabbitMQ restarts, or its newer
    messages are handled before older ones still queued in its old partition. (0.1's
    x-consistent-hash exchange renumbers its buckets on restart in the order the queues
    recover, which varies with what they hold: with messages queued, keys move.)"""
    if "127.0.0.1" not in amqp_url or not os.access(REPO / "scripts" / "brokers", os.X_OK):
        pytest.skip("needs the local broker from scripts/brokers")
    topic = f"rmq-keymap-{unique_suffix()}"
    url = with_options(amqp_url, "partitions=6")
    groups = [f"g{i}" for i in range(6)]
    keys = [f"key-{i}" for i in range(60)]
    consumer = EventBus(url)
    for group in groups:

        @consumer.subscribe(topic, group=group)
        async def handle(message: Message) -> None:
            raise AssertionError("declares the group; consumes nothing")

    async with consumer:
        pass  # the groups and their partitions now exist; nothing consumes them below

    async def publish(rounds: int) -> None:
        async with EventBus(url) as publisher:
            for _ in range(rounds):
                for key in keys:
                    await publisher.publish(topic, {"key": key}, key=key)

    await publish(5)  # queued in the partitions while the broker restarts
    await anyio.to_thread.run_sync(restart_broker)
    await publish(1)
    for group in groups:
        where = await drain_partitions(amqp_url, topic, group, 6)
        assert set(where) == set(keys)
        assert len(set().union(*where.values())) == 6, "keys spread over every partition"
        moved = {k: sorted(p) for k, p in where.items() if len(p) > 1}
        assert not moved, f"{group}: {len(moved)} keys in two partitions: {moved}"
