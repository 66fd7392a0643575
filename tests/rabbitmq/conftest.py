"""Fixtures for the RabbitMQ adapter tests: transports on the real broker, unique names."""

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiormq
import anyio
import pytest
from eventbus_rabbitmq import RabbitMQTransport
from rabbit_helpers import CREATED, Consumer, RecordingOwner, unique_suffix, with_options

from eventbus.transports.base import Subscription, SubscriptionSpec

Make = Callable[..., Awaitable[RabbitMQTransport]]
Subscribe = Callable[[RabbitMQTransport, SubscriptionSpec], Awaitable[Consumer]]


@pytest.fixture
def name() -> Callable[[str], str]:
    suffix = unique_suffix()
    return lambda base: f"rmq-{base}-{suffix}"


@pytest.fixture
async def make_transport(
    amqp_url: str,
) -> AsyncIterator[Callable[..., Awaitable[RabbitMQTransport]]]:
    """``await make_transport("partitions=3")``: a connected transport, closed after the test."""
    made: list[RabbitMQTransport] = []

    async def make(options: str = "") -> RabbitMQTransport:
        transport = RabbitMQTransport(with_options(amqp_url, options))
        await transport.connect()
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()


@pytest.fixture
async def subscribe(make_transport: Make) -> AsyncIterator[Subscribe]:
    """``await subscribe(transport, spec)``: subscribes with a `RecordingOwner` and runs the
    subscription's ``run`` in a task group, as the core does; returns once it is live (errors
    before that are raised here). After the test, every subscription is closed, and a ``run``
    that failed meanwhile fails the test."""
    running: list[tuple[Subscription, asyncio.Task[None]]] = []

    async def serve(sub: Subscription, live: asyncio.Future[None]) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                await tasks.start(sub.run)
                live.set_result(None)
        except BaseException as e:
            if live.done():
                raise
            while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
                e = e.exceptions[0]  # the task group wraps what run() raised before started()
            live.set_exception(e)

    async def start(transport: RabbitMQTransport, spec: SubscriptionSpec) -> Consumer:
        owner = RecordingOwner()
        sub = await transport.subscribe(spec, owner)
        live: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A task, not a task group: pytest-asyncio runs fixture teardown in another task.
        running.append((sub, asyncio.create_task(serve(sub, live))))
        await live
        return Consumer(sub, owner)

    yield start
    for sub, _task in running:
        await sub.close()
    with anyio.fail_after(30):
        for _sub, task in running:
            await task  # run() returns after close(), and raised nothing meanwhile


class _Started:
    """A ``task_status`` for a coroutine run as a plain task."""

    def __init__(self) -> None:
        self.live: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def started(self, value: object = None) -> None:
        if not self.live.done():
            self.live.set_result(None)


@pytest.fixture
async def forward(
    make_transport: Make,
) -> AsyncIterator[Callable[[RabbitMQTransport], Awaitable[None]]]:
    """``await forward(transport)``: runs the transport's scheduled-message forwarder (what
    every started bus does) until the test ends; returns once it forwards."""
    tasks: list[asyncio.Task[None]] = []

    async def start(transport: RabbitMQTransport) -> None:
        status = _Started()
        tasks.append(asyncio.create_task(transport.forward_scheduled(task_status=status)))
        await status.live

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(scope="session", autouse=True)
def delete_what_tests_declared() -> Iterator[None]:
    """Delete the queues and exchanges this session declared (by their unique name suffix), so
    that a shared broker does not pile up hundreds of quorum queues (which makes every restart
    slow). Needs ``rabbitmqctl`` (the local broker from scripts/brokers); skipped otherwise."""
    yield
    if not CREATED or shutil.which("rabbitmqctl") is None:
        return
    url = os.environ.get("EVENTBUS_TEST_AMQP", "").strip()
    if not url:
        return
    try:
        queues = _list("list_queues", "name")
        exchanges = _list("list_exchanges", "name")
    except (OSError, subprocess.SubprocessError):
        return
    doomed_queues = [q for q in queues if any(s in q for s in CREATED)]
    doomed_exchanges = [x for x in exchanges if any(s in x for s in CREATED)]
    asyncio.run(_delete(url.split("?")[0], doomed_queues, doomed_exchanges))


def _list(command: str, column: str) -> list[str]:
    result = subprocess.run(
        ["rabbitmqctl", "-q", command, column, "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


async def _delete(url: str, queues: list[str], exchanges: list[str]) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()
