"""examples/orders/web.py, the FastAPI front: tested as a user would with the test client
(memory://), and run as a user runs it: uvicorn and an ``eventbus run`` worker as real processes
on real RabbitMQ and Kafka. The web process publishes without joining the ``billing`` group:
with the worker stopped, an order it accepted waits in the group's queue until a worker is
back, and a quote gets a 504 after the request's timeout."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from eventbus.testing import TestBus

ROOT = Path(__file__).resolve().parents[2]


async def test_an_order_taken_over_http_is_billed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_DEMO_PRODUCER", "0")
    from examples.orders.service import OrderPlaced, SendEmail, bus
    from examples.orders.web import app

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://web")
    async with TestBus(bus) as client, app.router.lifespan_context(app), http:
        reply = await http.post("/orders", json={"order_id": 3, "customer": "ada", "amount": "9"})
        assert reply.status_code == 202
        await client.idle()
        (order,) = client.published("orders", OrderPlaced)
        assert (order.order_id, order.customer) == (3, "ada")
        assert client.published("emails", SendEmail) == [
            SendEmail(to="ada@example.com", subject="Receipt for order 3")
        ]
        assert (await http.post("/orders", json={"order_id": 0})).status_code == 422


async def test_a_quote_is_the_workers_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_DEMO_PRODUCER", "0")
    from examples.orders.service import bus
    from examples.orders.web import app

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://web")
    async with TestBus(bus), app.router.lifespan_context(app), http:
        reply = await http.get("/quotes", params={"sku": "apple", "quantity": 5})
        assert reply.status_code == 200
        assert reply.json() == {"sku": "apple", "quantity": 5, "total": "2.00"}
        unknown = await http.get("/quotes", params={"sku": "kiwi", "quantity": 1})
        assert unknown.status_code == 404 and unknown.json() == {"detail": "no price for 'kiwi'"}
        stats = bus.request_stats
        assert (stats.sent, stats.replied, stats.failed, stats.timed_out) == (2, 1, 1, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class _Process:
    """A child whose output goes to a file (never an unread pipe)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise


@pytest.fixture(params=["amqp_url", "kafka_url"], ids=["rabbitmq", "kafka"])
def spawn(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str, list[str]], _Process]]:
    url = request.getfixturevalue(request.param)
    env = {**os.environ, "EVENTBUS_URL": url, "EVENTBUS_DEMO_PRODUCER": "0"}
    started: list[_Process] = []

    def start(name: str, args: list[str]) -> _Process:
        process = _Process([sys.executable, *args], env, tmp_path / f"{name}-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _worker(spawn: Callable[[str, list[str]], _Process]) -> _Process:
    worker = spawn("worker", ["-m", "eventbus", "run", "examples.orders.service:bus"])
    _until(lambda: "subscribed: send_email" in worker.output(), "the worker's subscriptions")
    return worker


def test_the_web_front_publishes_and_the_worker_bills(
    spawn: Callable[[str, list[str]], _Process],
) -> None:
    worker = _worker(spawn)  # makes the billing group, as a deployed worker would
    port = _free_port()
    web = spawn(
        "web", ["-m", "uvicorn", "examples.orders.web:app", "--port", str(port), "--no-access-log"]
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    _until(ready, "the web front to be ready")
    first, second = (random.randrange(10**8, 10**9) * 5 + 1 for _ in range(2))

    reply = httpx.post(
        f"{base}/orders", json={"order_id": first, "customer": "ada", "amount": "12.50"}
    )
    assert reply.status_code == 202 and len(reply.json()["message_id"]) > 0
    _until(lambda: f"charged order {first}: 12.50 EUR" in worker.output(), "the worker to bill")
    quote = httpx.get(f"{base}/quotes", params={"sku": "pear", "quantity": 4}, timeout=10)
    assert quote.status_code == 200 and quote.json()["total"] == "2.20"
    assert "quoted 4 x pear: 2.20 EUR" in worker.output()

    assert worker.stop() == 0
    started = time.monotonic()
    late = httpx.get(f"{base}/quotes", params={"sku": "apple", "quantity": 1}, timeout=10)
    waited = time.monotonic() - started
    assert late.status_code == 504 and "no reply from queue 'prices'" in late.json()["detail"]
    assert 2.0 <= waited < 6.0, waited
    reply = httpx.post(f"{base}/orders", json={"order_id": second, "customer": "bo", "amount": "1"})
    assert reply.status_code == 202, "published with no worker running"
    time.sleep(1.0)
    assert f"order {second}" not in web.output(), "the web process must not handle orders"

    worker = _worker(spawn)
    _until(
        lambda: f"charged order {second}: 1 EUR" in worker.output(), "the order kept for billing"
    )

    bad = httpx.post(f"{base}/orders", json={"order_id": -1, "customer": "", "amount": "x"})
    assert bad.status_code == 422
    web.stop()  # uvicorn re-raises the SIGTERM once it shut down: the code says nothing
    assert "Application shutdown complete" in web.output(), web.output()
