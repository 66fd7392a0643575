"""The flow-control issue's acceptance test (DESIGN 11): three worker processes on one RabbitMQ
queue share a `RedisRateLimiter`; together they stay within the limit, do not stall, handle
every message once and dead-letter none."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from eventbus import EventBus, RateLimit
from eventbus.transports.base import SubscriptionSpec

pytestmark = [pytest.mark.amqp, pytest.mark.redis]

HERE = Path(__file__).parent
WORKERS = 3
RATE = 30.0
BURST = 5
MESSAGES = 300


class Worker:
    def __init__(self, log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("w") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "run", "ratelimit_app:bus"],
                cwd=HERE,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextlib.contextmanager
def workers(count: int, tmp_path: Path, env: dict[str, str]) -> Iterator[list[Worker]]:
    started = [Worker(tmp_path / f"worker-{i}.log", env) for i in range(count)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


async def wait_until(
    what: str, check: Callable[[], bool], within: float, logs: Callable[[], str]
) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s\n{logs()}")
        await anyio.sleep(0.1)


def handled(out: Path) -> list[tuple[float, int]]:
    lines = [line.split() for p in out.glob("*.txt") for line in p.read_text().splitlines()]
    return sorted((float(t), int(n)) for t, n in lines if t and n)


async def test_three_workers_share_one_limit(
    amqp_url: str, redis_url: str, name: Callable[[str], str], tmp_path: Path
) -> None:
    queue = name("rate-limit")
    out = tmp_path / "handled"
    out.mkdir()
    env = {
        "EVENTBUS_URL": amqp_url,
        "RL_QUEUE": queue,
        "RL_OUT": str(out),
        "RL_RATE": str(RATE),
        "RL_BURST": str(BURST),
        "RL_REDIS": redis_url,
        "RL_PREFIX": f"eventbus-test:ratelimit:{uuid.uuid4().hex}",
    }
    with workers(WORKERS, tmp_path, env) as procs:

        def logs() -> str:
            return "\n".join(f"--- worker {i}\n{w.text[-3000:]}" for i, w in enumerate(procs))

        await wait_until(
            "every worker subscribed",
            lambda: all("subscribed:" in w.text for w in procs),
            60,
            logs,
        )
        bus = EventBus(amqp_url)
        async with bus.publisher():
            for n in range(MESSAGES):
                await bus.send(queue, {"n": n})
            await wait_until(
                "every message handled",
                lambda: len(handled(out)) >= MESSAGES,
                MESSAGES / RATE * 3 + 10,
                logs,
            )
            await anyio.sleep(0.5)  # anything handled twice would show now
            records = handled(out)
            per_worker = [len(p.read_text().splitlines()) for p in sorted(out.glob("*.txt"))]
            dlq = await bus.transport.backlog(SubscriptionSpec(f"{queue}.dlq", "queue", None, 1))
        codes = [w.stop() for w in procs]

    times = [t for t, _ in records]
    # The steady part: after the first burst, turns come one per 1/RATE seconds at most.
    steady = (len(times) - 1 - BURST) / (times[-1] - times[BURST])
    overall = (len(times) - BURST) / (times[-1] - times[0])
    busiest = max(sum(1 for s in times[i:] if s - t < 1.0) for i, t in enumerate(times))
    report = (
        f"{len(records)} handled by {WORKERS} workers {per_worker} at limit {RATE}/s burst "
        f"{BURST}: steady {steady:.2f}/s, overall {overall:.2f}/s, busiest second {busiest}"
    )
    print(report)
    assert sorted(n for _, n in records) == list(range(MESSAGES)), f"each once; {report}"
    assert steady <= 1.15 * RATE, f"over the limit: {report}"
    assert steady >= 0.6 * RATE, f"stalling: {report}"
    assert busiest <= BURST + RATE + 1, f"a second over the limit: {report}"
    assert sum(1 for c in per_worker if c > 0) >= 2, f"the workers shared the work: {report}"
    assert dlq is None or dlq.total == 0, f"dead-lettered: {dlq}; {report}"
    assert codes == [0] * WORKERS, f"exit codes {codes}"


async def test_long_waits_pause_and_resume_a_rabbitmq_subscription(
    amqp_url: str, name: Callable[[str], str]
) -> None:
    """Turns 1.2 s apart: each wait pauses the subscription (RabbitMQ stops handing out) and
    resumes it; every message is still handled once, in order, with nothing redelivered."""
    queue = name("rate-limit-pause")
    bus = EventBus(amqp_url)
    starts: list[float] = []
    done = anyio.Event()

    @bus.consume(queue, rate_limit=RateLimit(per_second=1 / 1.2, burst=1))
    async def handle(job: dict[str, int]) -> None:
        starts.append(time.monotonic())
        if len(starts) == 4:
            done.set()

    async with bus:
        [runner] = bus._runners
        paused: list[bool] = []

        async def watch() -> None:
            while not done.is_set():
                paused.append(
                    runner._consume.current is not None and bool(runner._consume._paused_by)
                )
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for n in range(4):
                await bus.send(queue, {"n": n})
            with anyio.fail_after(20):
                await done.wait()
        await anyio.sleep(0.1)
        assert any(paused), "fetching paused during the long waits"
        assert not runner._consume._paused_by, "and resumed once none was left"
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 1.2 - 0.01 for gap in gaps), gaps
    stats = bus.subscribers[0].stats
    assert stats.handled == 4 and stats.redelivered == 0 and stats.dead_lettered == 0
    assert stats.throttled == 3 and stats.throttled_seconds >= 3 * 1.2 - 0.05
