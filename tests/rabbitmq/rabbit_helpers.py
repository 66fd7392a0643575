"""Helpers shared by the RabbitMQ adapter tests (imported by module name: tests are no package)."""

import asyncio
import subprocess
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import aiormq
import anyio

from eventbus.transports.base import RawDelivery, Subscription

CREATED: set[str] = set()
"""Name suffixes used by this test session; conftest deletes their queues and exchanges."""


def unique_suffix() -> str:
    suffix = uuid.uuid4().hex[:10]
    CREATED.add(suffix)
    return suffix


def close_connections(name: str) -> int:
    """``rabbitmqctl close_connection`` on every connection named ``name``; how many."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    closed = 0
    for line in listed.stdout.splitlines():
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in properties:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid.strip(), "test: connection lost"],
                capture_output=True,
                timeout=60,
                check=True,
            )
            closed += 1
    return closed


async def drain_partitions(url: str, topic: str, group: str, n: int) -> dict[str, set[int]]:
    """Empty a partitioned group's queues (nothing may consume them): in which partition
    queues each routing key (the message key) was found."""
    connection = await aiormq.connect(url)
    found: dict[str, set[int]] = defaultdict(set)
    try:
        channel = await connection.channel()
        for i in range(n):
            while (got := await channel.basic_get(f"{topic}.{group}.{i}", no_ack=True)).body:
                found[got.delivery.routing_key].add(i)
    finally:
        await connection.close()
    return found


def set_policy(name: str, pattern: str, definition: str, *, apply_to: str = "queues") -> None:
    """``rabbitmqctl set_policy`` (priority 100, so it wins over any broader policy). Use a
    name and a pattern unique to the test: the broker is shared."""
    subprocess.run(
        [
            *("rabbitmqctl", "-q", "set_policy", name, pattern, definition),
            *("--apply-to", apply_to, "--priority", "100"),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )


def clear_policy(name: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "-q", "clear_policy", name], capture_output=True, timeout=60, check=True
    )


async def queue_counts(url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of ``queue``, by a passive declare."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        ok = await channel.queue_declare(queue, passive=True)
        return ok.message_count or 0, ok.consumer_count or 0
    finally:
        await connection.close()


async def drain(url: str, queue: str) -> list[aiormq.abc.DeliveredMessage]:
    """Take (and ack) every message ready in ``queue``."""
    connection = await aiormq.connect(url)
    taken = []
    try:
        channel = await connection.channel()
        while (got := await channel.basic_get(queue, no_ack=True)).delivery_tag is not None:
            taken.append(got)
    finally:
        await connection.close()
    return taken


def through(url: str, port: int) -> str:
    """``url`` pointed at a local proxy on ``port`` (same credentials, vhost and options)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))


def with_options(url: str, options: str) -> str:
    if not options:
        return url
    return f"{url}{'&' if '?' in url else '?'}{options}"


class RecordingOwner:
    """A `DeliveryOwner` that records what it is told: ``calls`` holds (monotonic time, the
    deliveries) per ``lost`` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[RawDelivery]]] = []
        self._told = asyncio.Event()

    async def lost(self, deliveries: Sequence[RawDelivery]) -> None:
        self.calls.append((time.monotonic(), list(deliveries)))
        self._told.set()

    async def told(self, within: float = 10.0) -> tuple[float, list[RawDelivery]]:
        """The first ``lost`` call, waiting up to ``within`` seconds for it."""
        with anyio.fail_after(within):
            await self._told.wait()
        return self.calls[0]


class Consumer:
    """A subscription whose ``run`` is running (as the core runs it), with a recording owner.
    The take helpers below flatten its batches; what a batch held beyond what was asked for
    stays here (handed out, unsettled) for the next call."""

    def __init__(self, sub: Subscription, owner: RecordingOwner) -> None:
        self.sub = sub
        self.owner = owner
        self.batches: list[int] = []  # size of every batch yielded
        self.ready: deque[RawDelivery] = deque()

    async def next_batch(self) -> Sequence[RawDelivery]:
        batch = await anext(aiter(self.sub))
        assert batch, "batches are never empty"
        self.batches.append(len(batch))
        return batch

    async def stop(self) -> None:
        await self.sub.stop()

    async def close(self) -> None:
        await self.sub.close()


async def take(consumer: Consumer, count: int, within: float = 30.0) -> list[RawDelivery]:
    """The next ``count`` deliveries (unsettled); fails after ``within`` seconds."""
    with anyio.fail_after(within):
        while len(consumer.ready) < count:
            consumer.ready.extend(await consumer.next_batch())
    return [consumer.ready.popleft() for _ in range(count)]


async def next_or_none(consumer: Consumer, quiet: float) -> RawDelivery | None:
    """The next delivery, or None when nothing arrives for ``quiet`` seconds."""
    if not consumer.ready:
        with anyio.move_on_after(quiet):
            consumer.ready.extend(await consumer.next_batch())
    return consumer.ready.popleft() if consumer.ready else None


async def nothing_more(consumer: Consumer, quiet: float = 1.0) -> bool:
    """True when nothing arrives for ``quiet`` seconds."""
    return await next_or_none(consumer, quiet) is None
