"""``eventbus publish`` and ``eventbus dlq`` at their edges, each in a process of its own as a
user runs them: where the URL comes from, memory:// refused, a dead-letter queue that does not
exist (and is not created by asking), progress of a long replay, unreachable brokers in one
line. Against real RabbitMQ and Kafka where a broker is involved."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from eventbus import Message
from eventbus import headers as h
from eventbus.transports.base import Destination
from eventbus.transports.registry import transport_for_url

APPS = Path(__file__).parent / "apps"

pytestmark = pytest.mark.timeout(180)

BROKERS = [
    pytest.param("amqp", marks=pytest.mark.amqp),
    pytest.param("kafka", marks=pytest.mark.kafka),
]


def eventbus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m eventbus ARGS`` from the apps directory, without the caller's EVENTBUS_URL."""
    environment = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "eventbus", *args],
        cwd=APPS,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def depth(url: str, queue: str) -> int | None:
    async def ask() -> int | None:
        transport = transport_for_url(url)
        await transport.connect()
        try:
            return await transport.depth(queue, "queue")
        finally:
            await transport.close()

    return anyio.run(ask)


def kafka_topics(url: str) -> list[str]:
    """Every topic, from a metadata request that names none (so it can create none)."""

    async def ask() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=url.removeprefix("kafka://"))
        await admin.start()
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()

    return anyio.run(ask)


def fill_dead_letters(url: str, dlq: str, queue: str, count: int) -> None:
    """``count`` dead letters in ``dlq`` that a replay sends to the queue ``queue``."""
    letters = [
        Message(
            id=f"m{i}",
            topic=dlq,
            body=b'{"i": %d}' % i,
            headers={
                h.ORIGINAL_TOPIC: queue,
                h.ORIGINAL_KIND: "queue",
                h.DLQ_REASON: "rejected",
            },
        )
        for i in range(count)
    ]

    async def fill() -> None:
        transport = transport_for_url(url)
        await transport.connect()
        try:
            await transport.publish(Destination(dlq, "queue"), letters)
        finally:
            await transport.close()

    anyio.run(fill)


# -- where the URL comes from ---------------------------------------------------------------------


@pytest.mark.amqp
def test_publish_takes_url_or_eventbus_url(amqp_url: str) -> None:
    queue = unique("cli-pub")
    given = eventbus("publish", queue, "--queue", "--json", '{"a": 1}', "--url", amqp_url)
    assert given.returncode == 0, given.stderr
    from_env = eventbus(
        "publish", queue, "--queue", "--json", '{"a": 2}', env={"EVENTBUS_URL": amqp_url}
    )
    assert from_env.returncode == 0, from_env.stderr
    assert given.stderr == from_env.stderr == ""
    # 0.1's form still works, with a warning saying what replaces it.
    old = eventbus("publish", amqp_url, queue, "--queue", "--json", '{"a": 3}')
    assert old.returncode == 0, old.stderr
    assert "deprecated; use `eventbus publish TOPIC --url URL`" in old.stderr
    assert len({given.stdout, from_env.stdout, old.stdout}) == 3, "three message ids"
    assert depth(amqp_url, queue) == 3


def test_publish_without_a_url_says_how_to_give_one() -> None:
    done = eventbus("publish", "orders", "--json", "{}")
    assert done.returncode == 2
    assert done.stderr == "eventbus: error: give --url or set EVENTBUS_URL\n"


# -- memory:// from another process ---------------------------------------------------------------

MEMORY = "eventbus: error: memory:// lives inside one process, so `eventbus "


@pytest.mark.parametrize(
    ("args", "env", "command"),
    [
        (["publish", "orders", "--json", "{}", "--url", "memory://"], {}, "publish"),
        (["publish", "orders", "--json", "{}"], {"EVENTBUS_URL": "memory://x"}, "publish"),
        (["publish", "memory://", "orders", "--json", "{}"], {}, "publish"),
        (["dlq", "show", "orders.g.dlq", "--url", "memory://"], {}, "dlq show"),
        (["dlq", "replay", "orders.g.dlq"], {"EVENTBUS_URL": "memory://"}, "dlq replay"),
        (["dlq", "purge", "orders.g.dlq", "--yes", "--url", "memory://a"], {}, "dlq purge"),
        (["dlq", "list", "orders.g.dlq"], {"EVENTBUS_URL": "memory://"}, "dlq list"),
        (["dlq", "list", "--app", "dlq_app:bus"], {}, "dlq list"),
        (["status", "--group", "orders:g", "--url", "memory://"], {}, "status"),
        (["status", "--queue", "jobs"], {"EVENTBUS_URL": "memory://x"}, "status"),
        (["status", "--app", "dlq_app:bus"], {}, "status"),
    ],
)
def test_memory_urls_are_refused_in_a_process_of_their_own(
    args: list[str], env: dict[str, str], command: str
) -> None:
    done = eventbus(*args, env=env)
    assert done.returncode == 4, done.stderr
    assert done.stdout == ""
    [line] = [x for x in done.stderr.splitlines() if "deprecated" not in x]
    assert line.startswith(MEMORY + command + "` cannot reach"), line
    assert ("EVENTBUS_URL" in line) == bool(env)


# -- a dead-letter queue that does not exist ------------------------------------------------------


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("command", [["show"], ["replay"], ["purge", "--yes"]])
def test_a_missing_dead_letter_queue_is_reported_not_created(
    broker: str, command: list[str], request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(f"{broker}_url")
    name = unique("cli-missing") + ".dlq"
    done = eventbus("dlq", command[0], name, *command[1:], "--url", url)
    assert done.returncode == 8, done.stderr
    assert done.stdout == ""
    shown = url.replace(":guest@", ":***@")
    assert done.stderr == f"eventbus: error: no dead-letter queue {name!r} on {shown}\n"
    listed = eventbus("dlq", "list", name, "--url", url)
    assert (listed.returncode, listed.stdout) == (0, f"{name}\t-\n"), listed.stderr
    if broker == "kafka":
        time.sleep(2)  # a broker's auto-creation comes a moment after the metadata answer
        assert not [t for t in kafka_topics(url) if t.startswith(name)]
    else:
        assert depth(url, name) is None, "nothing declared it"


# -- progress of a long replay --------------------------------------------------------------------


@pytest.mark.parametrize("broker", BROKERS)
def test_a_long_replay_prints_progress_lines_when_piped(
    broker: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(f"{broker}_url")
    queue = unique("cli-replay")
    dlq = f"{queue}.dlq"
    fill_dead_letters(url, dlq, queue, 250)
    assert depth(url, dlq) == 250
    done = eventbus("dlq", "replay", dlq, "--url", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "replayed 250\n"
    progress = done.stderr.splitlines()
    # A line each 100 (a tenth of 250 is less), or every 5 s on a slow broker; none at the end.
    assert progress, "progress was shown"
    assert f"eventbus: replaying {dlq!r}: 100/250" in progress or len(progress) > 1, progress
    assert all(line.startswith(f"eventbus: replaying {dlq!r}: ") for line in progress), progress
    counts = [int(line.rsplit(" ", 1)[1].split("/")[0]) for line in progress]
    assert counts == sorted(counts) and counts[-1] < 250, progress
    assert depth(url, dlq) == 0
    assert depth(url, queue) == 250


# -- unreachable brokers --------------------------------------------------------------------------

SECRET = "S3cr3t-pw-4b1"
UNREACHABLE = {
    "kafka": "kafka://127.0.0.1:1?connect_timeout=2",
    "amqp": f"amqp://app:{SECRET}@127.0.0.1:1/?connect_timeout=2",
}


@pytest.mark.parametrize("broker", ["kafka", "amqp"])
@pytest.mark.parametrize(
    "args",
    [
        ["publish", "orders", "--json", "{}"],
        ["dlq", "show", "orders.g.dlq"],
        ["dlq", "list", "orders.g.dlq"],
        ["status", "--queue", "jobs"],
    ],
    ids=["publish", "dlq-show", "dlq-list", "status"],
)
def test_an_unreachable_broker_is_one_line(broker: str, args: list[str]) -> None:
    started = time.monotonic()
    done = eventbus(*args, "--url", UNREACHABLE[broker])
    assert done.returncode == 5, done.stderr
    assert time.monotonic() - started < 20
    [line] = done.stderr.splitlines()
    assert line.startswith("eventbus: error: cannot reach broker at 127.0.0.1:1"), line
    assert SECRET not in done.stderr


@pytest.mark.parametrize("broker", ["kafka", "amqp"])
def test_the_client_library_retries_show_at_debug_level(broker: str) -> None:
    done = eventbus("dlq", "show", "x.dlq", "--url", UNREACHABLE[broker], "--log-level", "debug")
    assert done.returncode == 5
    library = "aiokafka" if broker == "kafka" else "aiormq"
    retries = [line for line in done.stderr.splitlines() if f" {library}" in line]
    assert retries, done.stderr
    assert all(" DEBUG " in line for line in retries), retries
    assert SECRET not in done.stderr


@pytest.mark.parametrize("broker", ["kafka", "amqp"])
def test_a_worker_that_cannot_reach_its_broker_says_so_once(broker: str) -> None:
    done = eventbus("run", "slow_app:bus", "--url", UNREACHABLE[broker])
    assert done.returncode == 5, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1].startswith("eventbus: error: cannot reach broker at 127.0.0.1:1"), lines
    assert len(lines) == 2, "its start-up line and the error"
    assert SECRET not in done.stderr
