"""Fixtures for the RabbitMQ adapter tests: transports on the real broker, unique names."""

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiormq
import pytest
from eventbus_rabbitmq import RabbitMQTransport
from rabbit_helpers import CREATED, unique_suffix, with_options

Make = Callable[..., Awaitable[RabbitMQTransport]]


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
