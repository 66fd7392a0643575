"""Fault-injection scenarios on real Kafka and RabbitMQ (issue 8; docs/reliability.md).

Each scenario publishes 5 000 keyed messages (5 % poison) with confirmation while `eventbus run`
worker processes consume them in two groups (at-least-once, and exactly-once through the
PostgreSQL inbox), breaks something on purpose mid-stream, then asserts the ledger: nothing
lost, no duplicate effect, every poison message dead-lettered, per-key order kept.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from rel_harness import Fault, Scenario, ScenarioSettings, run_brokers_script
from rel_ledger import Ledger, summary
from rel_proxy import TcpProxy

pytestmark = [pytest.mark.reliability, pytest.mark.postgres, pytest.mark.timeout(420)]

KAFKA_PROXIED_UPSTREAM = int(os.environ.get("REL_KAFKA_PROXIED_UPSTREAM", "9094"))
"""The broker listener ``PROXIED`` (scripts/brokers), advertised as 127.0.0.1:<port below>."""
KAFKA_PROXIED_PORT = int(os.environ.get("REL_KAFKA_PROXIED_PORT", "19094"))
RABBIT_PARTITIONS = 6


# -- faults ------------------------------------------------------------------------------------


async def no_fault(s: Scenario) -> None:
    """Only the 5 % poison messages: the baseline every other scenario is compared with."""


async def sigkill_three_times(s: Scenario) -> None:
    """Three SIGKILLs at random points of the stream, each victim restarted 0-1 s later.
    The next kill does not wait for the restarted worker to be live (on Kafka its rejoin waits
    out the dead member's session), so every kill lands while messages flow."""
    points = sorted(s.rng.uniform(0.1, 0.85) for _ in range(3))
    for point in points:
        await s.progress(point)
        victim = s.rng.choice(s.alive_workers())
        pid = victim.pid
        victim.kill()
        s.event(f"SIGKILL {victim.name} (pid {pid}) at {s.confirmed} published")
        await asyncio.sleep(s.rng.uniform(0.0, 1.0))
        victim.start()
        s.event(f"{victim.name} restarting (pid {victim.pid})")
    for worker in s.workers:
        await worker.wait_ready()
    s.event("all workers live again")


async def sigterm_then_restart(s: Scenario) -> None:
    await s.progress(s.rng.uniform(0.3, 0.5))
    victim = s.rng.choice(s.alive_workers())
    pid = victim.pid
    s.event(f"SIGTERM {victim.name} (pid {pid}) at {s.confirmed} published")
    code, took = await victim.terminate(s.settings.graceful_timeout + 20)
    s.event(f"{victim.name} exited {code} after {took:.1f}s")
    s.extra["drain_seconds"] = round(took, 1)
    s.extra["must_be_zero:sigterm_exit_not_0"] = int(code != 0)
    s.extra["_drained_pid"] = pid
    await s.restart(victim)
    s.event(f"{victim.name} restarted (pid {victim.pid})")


def restart_broker(name: str) -> Fault:
    async def fault(s: Scenario) -> None:
        await s.progress(s.rng.uniform(0.3, 0.45))
        s.event(f"restarting {name} at {s.confirmed} published")
        # Publishing waits until the broker really goes down: scripts/brokers first takes its
        # lock, which another engineer's command may hold for a while.
        s.hold()

        def watch(line: str) -> None:
            if "stopping" in line:
                s.event(line.removeprefix("brokers: "))
                s.release()

        try:
            await run_brokers_script("restart", name, on_line=watch)
        finally:
            s.release()
        s.event(f"{name} restarted")

    return fault


async def cut_connections(s: Scenario) -> None:
    assert s.proxy is not None
    for point in (s.rng.uniform(0.2, 0.35), s.rng.uniform(0.55, 0.7)):
        await s.progress(point)
        cut = s.proxy.cut(refuse_for=2.0)
        s.event(f"proxy cut {cut} connections at {s.confirmed} published, refusing for 2s")
    s.extra["proxy_cut_connections"] = s.proxy.cut_connections


async def join_and_leave(s: Scenario) -> None:
    """Starts with 2 workers: +1, +1, -1 (SIGTERM), -1 (SIGTERM), +1."""
    steps = [(0.15, "join"), (0.3, "join"), (0.45, "leave"), (0.6, "leave"), (0.75, "join")]
    for point, step in steps:
        await s.progress(point)
        if step == "join":
            worker = await s.add_worker()
            s.event(f"{worker.name} joined (pid {worker.pid}) at {s.confirmed} published")
        else:
            worker = s.rng.choice(s.alive_workers())
            code, took = await worker.terminate(s.settings.graceful_timeout + 20)
            s.event(f"{worker.name} left: exit {code} after {took:.1f}s")
            s.extra["must_be_zero:leaver_exit_not_0"] = s.extra.get(
                "must_be_zero:leaver_exit_not_0", 0
            ) + int(code != 0)


# -- fixtures ----------------------------------------------------------------------------------


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _require(reason: str) -> None:
    if os.environ.get("EVENTBUS_REQUIRE_BROKERS", "").strip() not in ("", "0"):
        pytest.fail(reason + " (EVENTBUS_REQUIRE_BROKERS is set)", pytrace=False)
    pytest.skip(reason)


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"{parts.hostname}:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def _with_query(url: str, query: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="&".join(q for q in (parts.query, query) if q)))


async def _scripted(broker: str) -> None:
    """Broker restarts go through scripts/brokers: only for brokers it runs."""
    try:
        await run_brokers_script("status", broker, within=30)
    except AssertionError as exc:
        _require(f"{broker} is not run by scripts/brokers here, cannot restart it: {exc}")


@pytest.fixture
async def proxies() -> AsyncIterator[list[TcpProxy]]:
    made: list[TcpProxy] = []
    yield made
    for proxy in made:
        await proxy.close()


async def _run(
    s: Scenario, fault: Fault, record: Callable[[Ledger], None], workers: int | None = None
) -> None:
    try:
        ledger = await s.run(fault, workers=workers)
    except BaseException:
        print(s.logs())
        raise
    record(ledger)
    print(summary(ledger))
    # Connection loss (proxy cut, broker restart) may overlap a key's handling; orderly
    # membership changes may not (see Ledger.problems).
    problems = ledger.problems(check_overlaps=s.name not in ("proxy-cut", "broker-restart"))
    assert not problems, "\n".join([*problems, summary(ledger), s.logs()])
    await s.forget_rows()


# -- Kafka -------------------------------------------------------------------------------------

KAFKA_SCENARIOS = ["poison", "sigkill", "sigterm", "broker-restart", "proxy-cut", "group-churn"]


@pytest.mark.kafka
@pytest.mark.parametrize("scenario", KAFKA_SCENARIOS)
async def test_kafka(
    scenario: str,
    kafka_url: str,
    rel_dsn: str,
    rel_settings: ScenarioSettings,
    record_ledger: Callable[[Ledger], None],
    proxies: list[TcpProxy],
    tmp_path: Path,
) -> None:
    client_url, proxy, workers = kafka_url, None, None
    fault: Fault = {
        "poison": no_fault,
        "sigkill": sigkill_three_times,
        "sigterm": sigterm_then_restart,
        "broker-restart": restart_broker("kafka"),
        "proxy-cut": cut_connections,
        "group-churn": join_and_leave,
    }[scenario]
    if scenario == "broker-restart":
        await _scripted("kafka")
    if scenario == "group-churn":
        workers = 2
    if scenario == "proxy-cut":
        host = urlsplit(kafka_url).hostname or "127.0.0.1"
        if not _listening(host, KAFKA_PROXIED_UPSTREAM):
            _require(
                f"no Kafka listener PROXIED on {host}:{KAFKA_PROXIED_UPSTREAM} (advertised as "
                f"{host}:{KAFKA_PROXIED_PORT}) for the TCP proxy"
            )
        proxy = TcpProxy(host, KAFKA_PROXIED_UPSTREAM, listen_port=KAFKA_PROXIED_PORT)
        await proxy.start()
        proxies.append(proxy)
        client_url = _with_port(kafka_url, KAFKA_PROXIED_PORT)
    s = Scenario(
        rel_settings,
        name=scenario,
        broker="kafka",
        broker_url=kafka_url,
        client_url=client_url,
        dsn=rel_dsn,
        workdir=tmp_path / "workers",
        proxy=proxy,
    )
    await _run(s, fault, record_ledger, workers)


# -- RabbitMQ ----------------------------------------------------------------------------------

RABBIT_SCENARIOS = ["poison", "sigkill", "sigterm", "broker-restart", "proxy-cut"]


@pytest.mark.amqp
@pytest.mark.parametrize("scenario", RABBIT_SCENARIOS)
async def test_rabbitmq(
    scenario: str,
    amqp_url: str,
    rel_dsn: str,
    rel_settings: ScenarioSettings,
    record_ledger: Callable[[Ledger], None],
    proxies: list[TcpProxy],
    tmp_path: Path,
) -> None:
    # Partitioned groups: keys spread over the workers, order kept per key (DESIGN 3.5).
    broker_url = _with_query(amqp_url, f"partitions={RABBIT_PARTITIONS}")
    client_url, proxy = broker_url, None
    fault: Fault = {
        "poison": no_fault,
        "sigkill": sigkill_three_times,
        "sigterm": sigterm_then_restart,
        "broker-restart": restart_broker("rabbitmq"),
        "proxy-cut": cut_connections,
    }[scenario]
    if scenario == "broker-restart":
        await _scripted("rabbitmq")
    if scenario == "proxy-cut":
        parts = urlsplit(amqp_url)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
        await proxy.start()
        proxies.append(proxy)
        client_url = _with_port(broker_url, proxy.port)
    s = Scenario(
        rel_settings,
        name=scenario,
        broker="rabbitmq",
        broker_url=broker_url,
        client_url=client_url,
        dsn=rel_dsn,
        workdir=tmp_path / "workers",
        proxy=proxy,
        partitions=RABBIT_PARTITIONS,
    )
    await _run(s, fault, record_ledger)
