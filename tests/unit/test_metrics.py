"""Prometheus metrics and health on memory (DESIGN 9): each family's values, scraped over HTTP
from the bus's own endpoints, and what a bus without metrics does not load."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

import anyio
import pydantic
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventbus import (
    Batch,
    ConfigurationError,
    Delivery,
    EventBus,
    Message,
    MetricsConfig,
    PublishError,
    Reject,
    RequestTimeoutError,
    ResponderError,
    RetryPolicy,
)
from eventbus.testing.conformance import wait_for
from eventbus.transports.base import Destination
from eventbus.transports.memory import MemoryTransport


class Job(pydantic.BaseModel):
    n: int
    mode: str = "ok"


TWICE = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def scrape(bus: EventBus) -> Samples:
    assert bus.metrics_port is not None
    status, text = await anyio.to_thread.run_sync(fetch, bus.metrics_port, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels`` (``handler``: the end of
    the handler's qualified name)."""
    handler = labels.pop("handler", "")
    found = [
        v
        for (n, ls), v in samples.items()
        if n == name
        and set(labels.items()) <= set(ls)
        and dict(ls).get("handler", "").endswith(handler)
    ]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


class RefusingTransport(MemoryTransport):
    """Memory, except that publishes to ``refused`` fail (the broker did not confirm)."""

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        if to.name == "refused":
            raise PublishError("no", {i: RuntimeError("no") for i in range(len(messages))})
        await super().publish(to, messages)


async def test_counters_and_histograms_per_subscription(url: str) -> None:
    bus = EventBus(
        transport=RefusingTransport(url), metrics=MetricsConfig(port=0, host="127.0.0.1")
    )

    @bus.consume("jobs", retry=TWICE)
    async def work(job: Job) -> None:
        if job.mode == "reject":
            raise Reject("no")
        if job.mode == "fail":
            raise RuntimeError("always")

    @bus.subscribe("events", group="g", dedup=True)
    async def once(job: Job) -> None:
        pass

    @bus.consume("nacks", ack="manual", retry=TWICE)
    async def later(job: Job, delivery: Delivery) -> None:
        if delivery.attempt == 1:
            await delivery.nack(0)
        else:
            await delivery.ack()

    async with bus:
        for n in range(3):
            await bus.send("jobs", Job(n=n))
        await bus.send("jobs", Job(n=3, mode="reject"))
        await bus.send("jobs", Job(n=4, mode="fail"))
        await bus.send("jobs", {"not": "a job"})
        await bus.publish("events", Job(n=5), message_id="same")
        await bus.publish("events", Job(n=5), message_id="same")
        await bus.send("nacks", Job(n=6))
        with pytest.raises(PublishError):
            await bus.publish_many("refused", [Job(n=7), Job(n=8)])
        jobs, events, nacks = (s.stats for s in bus.subscribers)
        await wait_for(lambda: jobs.dead_lettered == 3 and events.received == 2)
        await wait_for(lambda: nacks.handled == 2 and nacks.received == 2)
        samples = await scrape(bus)

    q = {"destination": "jobs", "kind": "queue", "group": "", "handler": "work"}
    assert value(samples, "eventbus_consumed_messages_total", **q) == 6
    assert value(samples, "eventbus_handled_messages_total", **q) == 3
    assert value(samples, "eventbus_failed_attempts_total", **q) == 3  # reject 1, fail 2
    assert value(samples, "eventbus_retried_messages_total", **q) == 1
    for reason in ("rejected", "retries-exhausted", "undecodable"):
        letters = value(samples, "eventbus_dead_lettered_messages_total", reason=reason, **q)
        assert letters == 1, reason
    # Every attempt that reached the handler: 3 ok, 1 rejected, 2 failed.
    assert value(samples, "eventbus_process_duration_seconds_count", **q) == 6
    assert value(samples, "eventbus_process_duration_seconds_bucket", le="+Inf", **q) == 6
    assert value(samples, "eventbus_publish_to_handle_seconds_count", **q) == 6
    assert 0 <= value(samples, "eventbus_publish_to_handle_seconds_sum", **q) < 60
    t = {"destination": "events", "kind": "topic", "group": "g", "handler": "once"}
    assert value(samples, "eventbus_dedup_skipped_messages_total", **t) == 1
    assert value(samples, "eventbus_handled_messages_total", **t) == 1
    m = {"destination": "nacks", "handler": "later"}
    assert value(samples, "eventbus_redelivered_messages_total", **m) == 1
    assert value(samples, "eventbus_handled_messages_total", **m) == 2
    sent = "eventbus_published_messages_total"
    assert value(samples, sent, destination="jobs", kind="queue") == 6
    assert value(samples, sent, destination="events", kind="topic") == 2
    assert value(samples, sent, destination="refused", kind="topic") == 0
    errors = "eventbus_publish_errors_total"
    assert value(samples, errors, destination="refused", kind="topic") == 2
    assert value(samples, errors, destination="jobs", kind="queue") == 0


async def test_a_batch_handler_is_counted_per_message_and_timed_per_call(url: str) -> None:
    bus = EventBus(url, metrics=MetricsConfig(port=0, host="127.0.0.1"))
    calls: list[int] = []

    @bus.consume("batches", batch=Batch(max_size=4, max_wait=5.0))
    async def bulk(jobs: list[Job]) -> None:
        calls.append(len(jobs))

    async with bus:
        for n in range(8):
            await bus.send("batches", Job(n=n))
        await wait_for(lambda: calls == [4, 4])
        samples = await scrape(bus)
    b = {"destination": "batches", "handler": "bulk"}
    assert value(samples, "eventbus_handled_messages_total", **b) == 8
    assert value(samples, "eventbus_process_duration_seconds_count", **b) == 2, "per call"
    assert value(samples, "eventbus_publish_to_handle_seconds_count", **b) == 8, "per message"


async def test_in_flight_saturation_oldest_age_and_queue_depth(url: str) -> None:
    bus = EventBus(url, metrics=MetricsConfig(port=0, host="127.0.0.1", backlog_interval=0.05))
    go = anyio.Event()

    @bus.consume("jobs", concurrency=4, max_in_flight=4)
    async def work(job: Job) -> None:
        await go.wait()

    async with bus:
        for n in range(6):
            await bus.send("jobs", Job(n=n))
        await wait_for(lambda: bus.subscribers[0].stats.received == 4)
        await anyio.sleep(0.3)  # the oldest ages; the backlog is read again
        samples = await scrape(bus)
        q = {"destination": "jobs", "handler": "work"}
        assert value(samples, "eventbus_in_flight_messages", **q) == 4
        assert value(samples, "eventbus_in_flight_limit", **q) == 4
        assert value(samples, "eventbus_in_flight_saturation_ratio", **q) == 1.0
        assert 0.3 <= value(samples, "eventbus_oldest_unsettled_age_seconds", **q) < 30
        depth = "eventbus_queue_depth_messages"
        # Memory reports its queue's partitions as its queues.
        assert total(samples, depth, destination="jobs", group="") == 2
        assert not [n for n, _ in samples if n == "eventbus_consumer_lag_messages"]

        go.set()
        await wait_for(lambda: bus.subscribers[0].stats.handled == 6)
        await anyio.sleep(0.3)
        samples = await scrape(bus)
        assert value(samples, "eventbus_in_flight_messages", **q) == 0
        assert value(samples, "eventbus_in_flight_saturation_ratio", **q) == 0
        assert value(samples, "eventbus_oldest_unsettled_age_seconds", **q) == 0
        assert total(samples, depth, destination="jobs", group="") == 0


async def test_livez_and_readyz_follow_the_bus(url: str) -> None:
    bus = EventBus(url, metrics=MetricsConfig(port=0, host="127.0.0.1"), graceful_timeout=10)
    started, go = anyio.Event(), anyio.Event()

    @bus.consume("jobs")
    async def work(job: Job) -> None:
        started.set()
        await go.wait()

    def get(path: str) -> Callable[[], tuple[int, str]]:
        assert bus.metrics_port is not None
        port = bus.metrics_port
        return lambda: fetch(port, path)

    stop = anyio.Event()

    async def run() -> None:
        async with bus:
            await stop.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_for(lambda: bus.ready)
        assert (await anyio.to_thread.run_sync(get("/livez")))[0] == 200
        assert (await anyio.to_thread.run_sync(get("/readyz")))[0] == 200
        assert (await anyio.to_thread.run_sync(get("/nothing")))[0] == 404
        await bus.send("jobs", Job(n=1))
        await started.wait()
        stop.set()
        await wait_for(lambda: not bus.ready)
        # Draining: not ready any more, still alive and scrapeable.
        assert (await anyio.to_thread.run_sync(get("/readyz")))[0] == 503
        assert (await anyio.to_thread.run_sync(get("/livez")))[0] == 200
        go.set()
    assert bus.metrics_port is not None
    with pytest.raises(OSError):
        fetch(bus.metrics_port, "/livez")  # the endpoints end with the bus


def test_a_bus_without_metrics_never_imports_prometheus_client() -> None:
    code = (
        "import sys, anyio, eventbus\n"
        "bus = eventbus.EventBus('memory://no-metrics')\n"
        "@bus.consume('jobs')\n"
        "async def work(x: dict) -> None: pass\n"
        "async def main():\n"
        "    async with bus:\n"
        "        await bus.send('jobs', {})\n"
        "anyio.run(main)\n"
        "assert bus.metrics_registry is None\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_enabling_metrics_without_the_extra_names_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None  # as if not installed\n"
        "import eventbus\n"
        "try:\n"
        "    eventbus.EventBus('memory://x', metrics=True)\n"
        "except eventbus.ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True
    )
    assert "eventbus[prometheus]" in out.stdout


def test_metrics_config_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="port"):
        MetricsConfig(port=70000)
    with pytest.raises(ConfigurationError, match="backlog_interval"):
        MetricsConfig(backlog_interval=0)
    bus = EventBus("memory://x", metrics=True)
    assert bus.metrics_registry is not None and bus.metrics_port is None


async def test_requests_are_counted_by_outcome_and_late_replies_too() -> None:
    bus = EventBus("memory://metrics-requests", metrics=MetricsConfig(port=0))
    release = anyio.Event()

    @bus.consume("ask", retry=RetryPolicy(max_attempts=1))
    async def answer(job: Job) -> int:
        if job.mode == "fail":
            raise ValueError("no")
        if job.mode == "slow":
            await release.wait()
        return job.n

    async with bus:
        assert await bus.request("ask", Job(n=1), timeout=10) == 1
        with pytest.raises(ResponderError):
            await bus.request("ask", Job(n=2, mode="fail"), timeout=10)
        with pytest.raises(RequestTimeoutError):
            await bus.request("ask", Job(n=3, mode="slow"), timeout=0.2)
        release.set()
        await wait_for(lambda: bus.request_stats.late == 1, what="the late reply")
        samples = await scrape(bus)
    assert value(samples, "eventbus_requests_total", outcome="replied") == 1
    assert value(samples, "eventbus_requests_total", outcome="failed") == 1
    assert value(samples, "eventbus_requests_total", outcome="timed_out") == 1
    assert value(samples, "eventbus_late_replies_total") == 1
