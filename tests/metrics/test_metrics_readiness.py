"""``/readyz`` of ``eventbus run --workers 2 --metrics-port P`` follows a broker outage, on
RabbitMQ and on Kafka: 503 while the broker is stopped (the workers' subscriptions are
reconnecting, their loops still answer ``/livez``), 200 again once it is back and they
resubscribed.

Stops the shared local broker: run it alone (``-m reliability``). ``EVENTBUS_BROKERS_SCRIPT``
names the ``scripts/brokers`` that manages the running brokers when it is not this checkout's
(its state lives next to the script).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import anyio
import pytest
from metrics_harness import MetricsWorkers, eventually

from eventbus import EventBus

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

BROKERS = Path(
    os.environ.get("EVENTBUS_BROKERS_SCRIPT")
    or Path(__file__).resolve().parents[2] / "scripts" / "brokers"
)


def brokers(*args: str) -> None:
    done = subprocess.run([str(BROKERS), *args], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


async def send_one(url: str, name: str) -> None:
    async with EventBus(url) as bus:
        await bus.send(name, {"n": 1})


@pytest.mark.parametrize(
    ("broker", "fixture"),
    [
        pytest.param("rabbitmq", "amqp_url", marks=pytest.mark.amqp),
        pytest.param("kafka", "kafka_url", marks=pytest.mark.kafka),
    ],
)
def test_readyz_is_503_while_the_broker_is_down(
    broker: str, fixture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(fixture)
    if "127.0.0.1" not in url or not os.access(BROKERS, os.X_OK):
        pytest.skip("needs the local broker from scripts/brokers")
    name = f"metrics-ready-{uuid.uuid4().hex[:8]}"
    gate = tmp_path / "gate"
    gate.touch()  # handlers finish at once
    workers = MetricsWorkers(url, name, "queue", gate)
    try:
        eventually(lambda: workers.get("/readyz")[0] == 200, 120, "both workers ready")
        brokers("stop", broker)
        try:
            # Kafka: until a heartbeat finds the coordinator gone (a few seconds).
            eventually(lambda: workers.get("/readyz")[0] == 503, 90, "not ready", every=0.1)
            assert workers.get("/livez")[0] == 200, "alive while reconnecting"
        finally:
            brokers("start", broker)
        eventually(lambda: workers.get("/readyz")[0] == 200, 180, "ready again")
        anyio.run(send_one, url, name)
        handled = "eventbus_handled_messages_total"
        eventually(lambda: workers.total(handled, destination=name) == 1, 60, "consuming again")
    finally:
        code, err = workers.stop()
    assert code == 0, err[-3000:]
