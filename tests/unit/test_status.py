"""``eventbus status``: lag or depth, dead letters and consumers per group and queue, read from
the broker by a separate process, on memory (in process), real Kafka and real RabbitMQ."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest

from eventbus import EventBus, Reject
from eventbus.cli import main
from eventbus.testing import memory_broker

APPS = Path(__file__).parent / "apps"


def status(url: str, topic: str, *extra: str) -> str:
    """``python -m eventbus status --app status_app:bus`` in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "eventbus", "status", "--app", "status_app:bus", *extra],
        cwd=APPS,
        env={**os.environ, "STATUS_URL": url, "STATUS_TOPIC": topic, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def row(table: str, name: str, group: str) -> list[str]:
    """The cells of the table row for ``name``/``group``."""
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == name and cells[1] == group:
            return cells
    raise AssertionError(f"no row {name}/{group} in\n{table}")


@pytest.mark.parametrize(
    "broker",
    [pytest.param("kafka", marks=pytest.mark.kafka), pytest.param("amqp", marks=pytest.mark.amqp)],
)
async def test_status_shows_backlog_dead_letters_and_consumers(
    broker: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(f"{broker}_url")
    if broker == "amqp":
        url += "?partitions=3"
    topic = f"status-{uuid.uuid4().hex[:8]}"
    bus = EventBus(url)
    billed: list[int] = []

    @bus.subscribe(topic, group="billing")
    async def bill(order: dict) -> None:  # type: ignore[type-arg]
        billed.append(order["i"])
        if order["i"] < 2:
            raise Reject("bad order")

    @bus.subscribe(topic, group="shipping")
    async def ship(order: dict) -> None:  # type: ignore[type-arg]
        pass

    @bus.consume(f"{topic}-jobs")
    async def job(order: dict) -> None:  # type: ignore[type-arg]
        pass

    async with bus:
        pass  # every group and queue exists from now on
    async with EventBus(url) as publisher:
        for i in range(12):
            await publisher.publish(topic, {"i": i}, key=f"k{i % 5}")
        await publisher.send(f"{topic}-jobs", {"i": 0})
    before = await anyio.to_thread.run_sync(status, url, topic)
    assert row(before, topic, "billing")[3:7:3] == ["12", "0"], before  # waiting, dead letters
    assert row(before, topic, "shipping")[3] == "12"
    assert row(before, f"{topic}-jobs (queue)", "")[3] == "1"
    assert row(before, topic, "billing")[5] == "0", "nobody consumes"

    only_billing = EventBus(url)
    only_billing.subscribe(topic, group="billing")(bill)
    async with only_billing:
        with anyio.fail_after(60):
            while len(billed) < 12:  # noqa: ASYNC110 - the handler's progress
                await anyio.sleep(0.1)
        await anyio.sleep(1.5)  # Kafka commits every 0.5 s
        during = await anyio.to_thread.run_sync(status, url, topic)
    billing = row(during, topic, "billing")
    assert (billing[3], billing[6]) == ("0", "2"), during  # handled; the two rejects wait
    assert int(billing[5]) >= 1, "its consumer is counted while it runs"
    assert row(during, topic, "shipping")[3] == "12", "the other group still waits"


def test_status_needs_something_to_report_on(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["status", "--url", "memory://status-nothing"])
    assert caught.value.code == 2
    assert "give --app" in capsys.readouterr().err


def test_status_of_named_groups_and_queues(capsys: pytest.CaptureFixture[str]) -> None:
    memory_broker("status-named")  # in this process: the one `main` reads
    code = main(
        ["status", "--url", "memory://status-named", "--group", "orders:billing", "--queue", "q"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "orders" in out and "billing" in out and "missing" in out


@pytest.mark.amqp
def test_watch_redraws_until_ctrl_c(amqp_url: str) -> None:
    """Piped (not a terminal), each redraw is printed after the previous one; Ctrl-C ends it
    with exit code 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus", "status", "--app", "status_app:bus", "--watch", "0.2"],
        cwd=APPS,
        env={
            **os.environ,
            "STATUS_URL": amqp_url,
            "STATUS_TOPIC": f"status-{uuid.uuid4().hex[:8]}",
            "COLUMNS": "200",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.count("eventbus status at") >= 3, out
    assert out.count("billing") == out.count("eventbus status at"), "one row per table"
