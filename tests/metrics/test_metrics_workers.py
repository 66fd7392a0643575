"""``eventbus run --workers 2 --metrics-port P`` on real Kafka and RabbitMQ: one scrape of the
parent shows what both workers did, and the backlog rising and draining (DESIGN 9)."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest
from metrics_harness import LIMIT, MetricsWorkers, eventually

from eventbus import EventBus

N = 40


async def publish_backlog(url: str, name: str, kind: str) -> None:
    """Before any worker runs: on Kafka the log keeps it for group ``g`` (offset_reset
    earliest); on RabbitMQ it waits in the queue."""
    bus = EventBus(url)
    async with bus:
        if kind == "topic":
            await bus.publish_many(name, [{"n": i} for i in range(N)])
        else:
            for i in range(N):
                await bus.send(name, {"n": i})


@pytest.mark.parametrize(
    ("broker", "kind"),
    [
        pytest.param("kafka", "topic", marks=pytest.mark.kafka),
        pytest.param("amqp", "queue", marks=pytest.mark.amqp),
    ],
)
def test_workers_add_up_and_backlog_drains(
    request: pytest.FixtureRequest, tmp_path: Path, broker: str, kind: str
) -> None:
    url: str = request.getfixturevalue(f"{broker}_url")
    name = f"metrics-{broker}-{uuid.uuid4().hex[:8]}"
    gate = tmp_path / "gate"
    anyio.run(publish_backlog, url, name, kind)
    workers = MetricsWorkers(url, name, kind, gate)
    try:
        eventually(lambda: workers.get("/readyz")[0] == 200, 120, "both workers ready")
        assert workers.get("/livez")[0] == 200
        s = {"destination": name}
        # Two workers, each bounded by LIMIT: the parent added both up.
        eventually(
            lambda: workers.total("eventbus_in_flight_limit", **s) == 2 * LIMIT, 30, "2 workers"
        )
        if kind == "topic":
            # Nothing is committed while the handlers wait: the whole backlog is lag.
            lag = "eventbus_consumer_lag_messages"
            eventually(lambda: workers.total(lag, **s, group="g") == N, 60, f"lag {N}")
            assert workers.total("eventbus_queue_depth_messages") == 0
        else:
            # What the workers prefetched is not ready any more; the rest waits in the queue.
            depth = "eventbus_queue_depth_messages"

            def waiting_plus_fetched() -> bool:
                fetched = workers.total("eventbus_consumed_messages_total", **s)
                return fetched > 0 and workers.total(depth, **s, queue=name) == N - fetched

            eventually(waiting_plus_fetched, 60, "depth = backlog - fetched")
            assert workers.total(depth, **s) > 0
        assert workers.total("eventbus_in_flight_messages", **s) > 0
        assert workers.total("eventbus_oldest_unsettled_age_seconds", **s) > 0

        gate.touch()
        handled = "eventbus_handled_messages_total"
        eventually(lambda: workers.total(handled, **s) == N, 120, f"{N} handled")
        backlog = "eventbus_consumer_lag_messages" if kind == "topic" else depth
        eventually(lambda: workers.total(backlog, **s) == 0, 60, "backlog drained")
        assert workers.total("eventbus_in_flight_messages", **s) == 0
        assert workers.total("eventbus_process_duration_seconds_count", **s) == N
        # Attempts cancelled by a rebalance while the second worker joined started, so they
        # count in the latency, not in the duration.
        assert workers.total("eventbus_publish_to_handle_seconds_count", **s) >= N
    finally:
        code, err = workers.stop()
    assert code == 0, err[-3000:]
