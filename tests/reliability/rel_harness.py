"""Runs one reliability scenario: real `eventbus run` workers, a paced publisher, dead-letter
readers, a fault, and the ledger (``rel_ledger``).

    scenario = Scenario(settings, name="kill", broker="kafka", ...)
    ledger = await scenario.run(fault)       # fault: async (scenario) -> None

Timeline: start the workers and wait until each is live (its ``on_startup`` hook writes a
file); publish ``messages`` keyed messages at ``rate``/s while the fault runs (it waits on
publish progress with `Scenario.progress`, so faults land mid-stream); wait until every confirmed
good message is handled by both groups and every poison message is in both dead-letter queues
(or the deadline passes); stop the workers with SIGTERM; compute the ledger.

Every wait has a deadline; every worker process is killed in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import ledger_app
from rel_ledger import (
    Effect,
    GroupLedger,
    Invocation,
    Ledger,
    Published,
    group_ledger,
    parse_rows,
    redone_after,
)
from rel_proxy import TcpProxy

from eventbus import EventBus
from eventbus import headers as h
from eventbus.testing.spi import open_subscription
from eventbus.transports.base import SubscriptionSpec
from eventbus.transports.registry import transport_for_url

__all__ = ["Scenario", "ScenarioSettings", "Worker", "run_brokers_script"]

log = logging.getLogger("reliability")

REPO = Path(__file__).resolve().parents[2]
APP = "tests.reliability.ledger_app:bus"
GROUPS = ("alo", "eo")

Fault = Callable[["Scenario"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ScenarioSettings:
    """Knobs shared by every scenario; environment variables override the defaults so a run
    can be made heavier or lighter without editing code (docs/reliability.md)."""

    messages: int = 5000
    keys: int = 50
    poison_ratio: float = 0.05
    rate: float = 300.0
    """Messages per second the publisher aims at (so the stream lasts messages/rate s)."""
    workers: int = 3
    concurrency: int = 8
    handler_ms: float = 1.0
    lease: float = 5.0
    graceful_timeout: float = 10.0
    start_timeout: float = 60.0
    settle_timeout: float = 150.0
    """After the last publish: how long handling and dead-lettering may take to catch up."""
    publish_timeout: float = 90.0
    """How long one message may keep failing to publish before the scenario gives up (a
    broker restart takes about 10-30 s)."""
    seed: int | None = None

    @classmethod
    def from_env(cls) -> ScenarioSettings:
        env, d = os.environ, cls()
        seed = env.get("REL_SEED")
        return cls(
            messages=int(env.get("REL_MESSAGES", d.messages)),
            keys=int(env.get("REL_KEYS", d.keys)),
            rate=float(env.get("REL_RATE", d.rate)),
            workers=int(env.get("REL_WORKERS", d.workers)),
            concurrency=int(env.get("REL_CONCURRENCY", d.concurrency)),
            handler_ms=float(env.get("REL_HANDLER_MS", d.handler_ms)),
            seed=int(seed) if seed else None,
        )


# -- worker processes ---------------------------------------------------------------------------


class Worker:
    """One `eventbus run` process slot; `start` again after a kill is a new incarnation."""

    def __init__(self, scenario: Scenario, index: int) -> None:
        self.scenario = scenario
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.exit_codes: list[int | None] = []
        self.log_path = scenario.workdir / f"worker-{index}.log"
        self._ready: Path | None = None

    @property
    def name(self) -> str:
        return f"w{self.index}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.alive(), f"{self.name} is already running"
        s = self.scenario
        self._ready = s.workdir / f"{self.name}-{len(self.pids)}.ready"
        env = {
            **os.environ,
            "REL_DSN": s.dsn,
            "REL_RUN": s.run_id,
            "REL_TOPIC": s.topic,
            "REL_GROUP": s.group,
            "REL_CONCURRENCY": str(s.settings.concurrency),
            "REL_HANDLER_MS": str(s.settings.handler_ms),
            "REL_LEASE": str(s.settings.lease),
            "REL_READY_FILE": str(self._ready),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("EVENTBUS_URL", None)
        command = [
            sys.executable,
            "-m",
            "eventbus",
            "run",
            APP,
            "--url",
            s.client_url,
            "--graceful-timeout",
            str(s.settings.graceful_timeout),
        ]
        with open(self.log_path, "ab") as out:  # the child keeps its own descriptor
            out.write(f"---- {self.name} start {time.strftime('%X')}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run must not reach it
            )
        self.pids.append(self.proc.pid)

    async def wait_ready(self) -> None:
        timeout = self.scenario.settings.start_timeout
        deadline = time.monotonic() + timeout
        assert self._ready is not None
        while not self._ready.exists():
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited with {self.proc and self.proc.returncode} before it "
                    f"was ready:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready within {timeout}s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        self.exit_codes.append(self.proc.wait(timeout=10))

    async def terminate(self, within: float) -> tuple[int | None, float]:
        """SIGTERM, wait up to ``within`` s; returns (exit code or None if it had to be
        killed, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None and time.monotonic() - started < within:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        if self.proc.poll() is None:
            self.kill()
            return None, took
        self.exit_codes.append(self.proc.returncode)
        return self.proc.returncode, took

    def tail(self, lines: int = 40) -> str:
        """The log's last lines, without the (expected) records of undecodable poison
        messages and their pydantic details, which would hide everything else."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        kept, skipping = [], False
        for line in text:
            if line[:4].isdigit() or line.startswith("----"):  # a new record
                skipping = "undecodable message" in line or "reliability.app: stats" in line
            if not skipping:
                kept.append(line)
        return "\n".join(kept[-lines:])


# -- dead-letter readers ------------------------------------------------------------------------


class DeadLetterReader:
    """Reads one dead-letter queue for the whole scenario, acking what it reads.

    A dead letter is identified by (message id, ``eventbus-failed-at``): reading the same
    record twice (a reconnect before the ack was committed) is not a second copy, while the
    same message dead-lettered twice (at-least-once: a worker died between publishing the
    dead letter and acking the original) is."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.copies: dict[tuple[str, str], str] = {}
        self.errors = 0

    @property
    def ids(self) -> list[str]:
        return [mid for mid, _ in self.copies]

    async def run(self) -> None:
        while True:
            transport = transport_for_url(self.url)
            try:
                await transport.connect()
                spec = SubscriptionSpec(self.name, "queue", None, 1000)
                async with open_subscription(transport, spec) as opened:
                    while True:
                        raw = await opened.next()
                        m = raw.message
                        copy = (m.id, m.headers.get(h.FAILED_AT, ""))
                        self.copies[copy] = m.headers.get(h.DLQ_REASON, "")
                        await raw.ack()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                log.info("dead-letter reader %s: %r; reading again", self.name, exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(transport.close(), 10)


# -- cleanup ------------------------------------------------------------------------------------


async def delete_broker_entities(scenario: Scenario, partitions: int) -> None:
    """Delete what the scenario created on the broker (best effort, bounded).

    Leftovers are not harmless: RabbitMQ 3.10 with the default open-files limit (1024) stops
    accepting connections once a few hundred durable queues hold its file handles."""
    names = [f"{scenario.topic}.{scenario.group}-{g}" for g in GROUPS]
    try:
        async with asyncio.timeout(30):
            if scenario.broker == "rabbitmq":
                await _delete_rabbit(scenario.broker_url, scenario.topic, names, partitions)
            else:
                await _delete_kafka(scenario.broker_url, scenario.topic, names)
    except Exception as exc:
        log.warning("cleanup of %s failed: %r", scenario.topic, exc)


async def _delete_rabbit(url: str, topic: str, groups: list[str], partitions: int) -> None:
    import aiormq  # the adapter's client

    parts = urlsplit(url)
    conn = await aiormq.connect(urlunsplit(parts._replace(query="")))
    try:
        channel = await conn.channel()
        for group in groups:
            queues = [f"{group}.{i}" for i in range(partitions)]
            for queue in [*queues, group, f"{group}.members", f"{group}.hungry", f"{group}.dlq"]:
                await channel.queue_delete(queue)  # a missing queue is fine on RabbitMQ
            await channel.exchange_delete(group)
        await channel.exchange_delete(topic)
    finally:
        await conn.close()


async def _delete_kafka(url: str, topic: str, groups: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    bootstrap = urlsplit(url).netloc.rsplit("@", 1)[-1]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        mine = {topic} | {
            f"{g}.{suffix}" for g in groups for suffix in ("retry", "dlq", "dlq.retry")
        }
        if mine & existing:
            await admin.delete_topics(sorted(mine & existing))
    finally:
        await admin.close()


# -- the scenario -------------------------------------------------------------------------------


async def run_brokers_script(
    *args: str, within: float = 240.0, on_line: Callable[[str], None] | None = None
) -> str:
    """``scripts/brokers ARGS`` (owned by the broker setup; only called, never edited).
    ``on_line`` sees each line of its output as it comes (progress goes to stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(REPO / "scripts" / "brokers"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(within):
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                lines.append(line)
                if on_line is not None:
                    on_line(line)
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"scripts/brokers {' '.join(args)} took over {within}s") from None
    text = "\n".join(lines)
    if proc.returncode != 0:
        raise AssertionError(f"scripts/brokers {' '.join(args)} failed:\n{text}")
    return text


@dataclass(slots=True)
class _PublishState:
    confirmed: list[Published] = field(default_factory=list)
    attempts: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Scenario:
    """One run of one fault against one broker. See the module docstring."""

    def __init__(
        self,
        settings: ScenarioSettings,
        *,
        name: str,
        broker: str,
        broker_url: str,
        client_url: str,
        dsn: str,
        workdir: Path,
        proxy: TcpProxy | None = None,
        partitions: int = 1,
    ) -> None:
        self.settings = settings
        self.name = name
        self.broker = broker
        self.broker_url = broker_url
        """Direct to the broker: the dead-letter readers (observers, not subjects) use it."""
        self.client_url = client_url
        """What the workers and the publisher use (through the proxy when there is one)."""
        self.dsn = dsn
        self.workdir = workdir
        self.proxy = proxy
        self.partitions = partitions
        """RabbitMQ partition queues per group (for the cleanup)."""
        suffix = uuid.uuid4().hex[:8]
        self.run_id = f"{name}-{broker}-{suffix}"
        self.topic = f"rel-{name}-{suffix}"
        self.group = f"rel-{suffix}"
        self.seed = settings.seed if settings.seed is not None else random.randrange(2**32)
        self.rng = random.Random(self.seed)
        self.workers: list[Worker] = []
        self.events: list[str] = []
        self.extra: dict[str, Any] = {}
        self._started = 0.0
        self._pub = _PublishState()
        self._progress = asyncio.Condition()
        self._gate = asyncio.Event()
        self._gate.set()
        self._held = 0.0
        """Seconds the publisher was held, added to its schedule."""
        self._held_since = 0.0
        workdir.mkdir(parents=True, exist_ok=True)

    # -- for faults ----------------------------------------------------------------------------

    def event(self, text: str) -> None:
        stamp = time.monotonic() - self._started
        self.events.append(f"{stamp:.1f}s {text}")
        log.info("%s: %s", self.run_id, text)

    @property
    def confirmed(self) -> int:
        return len(self._pub.confirmed)

    async def progress(self, fraction: float) -> None:
        """Wait until ``fraction`` of the messages are confirmed (deadline: the publish)."""
        target = int(self.settings.messages * fraction)
        async with self._progress:
            await self._progress.wait_for(lambda: self.confirmed >= target)

    def hold(self) -> None:
        """Pause the publisher (e.g. until a broker restart really begins: scripts/brokers
        may first wait for its lock while another engineer's command runs)."""
        self._gate.clear()
        self._held_since = time.monotonic()

    def release(self) -> None:
        if not self._gate.is_set():
            self._held += time.monotonic() - self._held_since
            self._gate.set()

    async def add_worker(self) -> Worker:
        worker = Worker(self, len(self.workers))
        self.workers.append(worker)
        worker.start()
        await worker.wait_ready()
        return worker

    async def restart(self, worker: Worker) -> None:
        worker.start()
        await worker.wait_ready()

    def alive_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    # -- the run -------------------------------------------------------------------------------

    async def run(self, fault: Fault, *, workers: int | None = None) -> Ledger:
        self._started = time.monotonic()
        db = await asyncpg.connect(self.dsn)
        readers = {
            g: DeadLetterReader(self.broker_url, f"{self.topic}.{self.group}-{g}.dlq")
            for g in GROUPS
        }
        try:
            async with asyncio.TaskGroup() as tg:
                reader_tasks = [tg.create_task(r.run()) for r in readers.values()]
                try:
                    await self._run(fault, workers or self.settings.workers, db, readers)
                finally:
                    for task in reader_tasks:
                        task.cancel()
            ledger = await self._ledger(db, readers)
        finally:
            for worker in self.workers:
                worker.kill()
            await db.close()
            await delete_broker_entities(self, self.partitions)
        ledger.seconds = time.monotonic() - self._started
        return ledger

    async def _run(
        self, fault: Fault, count: int, db: Any, readers: dict[str, DeadLetterReader]
    ) -> None:
        s = self.settings
        self.workers = [Worker(self, i) for i in range(count)]
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            await worker.wait_ready()
        self.event(f"{count} workers ready")
        plan = self._plan()
        poison = sum(p.poison for p in plan)
        # Both groups subscribed before the first publish: on RabbitMQ a topic with no
        # subscriber drops (refuses) what is published to it.
        async with asyncio.TaskGroup() as tg:
            publishing = tg.create_task(self._publish(plan))
            faulting = tg.create_task(fault(self))
            await publishing
            self.event(f"published {self.confirmed} (retries {self._pub.retries})")
            async with asyncio.timeout(s.settle_timeout):
                await faulting
        good = self.confirmed - poison
        deadline = time.monotonic() + s.settle_timeout
        while True:
            handled = await self._handled_counts(db)
            lettered = {g: len(set(readers[g].ids)) for g in GROUPS}
            if all(handled[g] >= good and lettered[g] >= poison for g in GROUPS):
                self.event("all handled and dead-lettered")
                break
            if time.monotonic() > deadline:
                self.event(f"gave up waiting: handled {handled}, dead-lettered {lettered}")
                break
            if not self.alive_workers():
                self.event("no worker alive")
                break
            await asyncio.sleep(0.5)
        await self._stop_workers()
        await asyncio.sleep(1.0)  # late copies in the dead-letter queues

    async def _stop_workers(self) -> None:
        alive = self.alive_workers()
        results = await asyncio.gather(
            *(w.terminate(self.settings.graceful_timeout + 20) for w in alive)
        )
        codes = {w.name: rc for w, (rc, _) in zip(alive, results, strict=True)}
        self.event(f"workers stopped: {codes}")
        self.extra["must_be_zero:workers_not_exiting_0_at_end"] = sum(
            1 for rc in codes.values() if rc != 0
        )

    def _plan(self) -> list[Published]:
        s = self.settings
        poison = set(self.rng.sample(range(s.messages), round(s.messages * s.poison_ratio)))
        return [
            Published(
                id=uuid.uuid4().hex,
                key=f"k{i % s.keys:03d}",
                seq=i // s.keys,
                poison=i in poison,
            )
            for i in range(s.messages)
        ]

    async def _publish(self, plan: list[Published]) -> None:
        """One task per key publishes that key's messages in order, each once confirmed
        (retrying the same message id on failure); all paced to ``rate`` overall."""
        s = self.settings
        by_key: dict[str, list[tuple[int, Published]]] = {}
        for index, item in enumerate(plan):
            by_key.setdefault(item.key, []).append((index, item))
        bus = EventBus(self.client_url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(s.messages / s.rate + s.publish_timeout + 60):
            async with bus:
                start = loop.time()
                async with asyncio.TaskGroup() as tg:
                    for items in by_key.values():
                        tg.create_task(self._publish_key(bus, items, start))

    async def _publish_key(
        self, bus: EventBus, items: list[tuple[int, Published]], start: float
    ) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        for index, item in items:
            await self._gate.wait()
            delay = start + self._held + index / s.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            payload: dict[str, Any] = {"run": self.run_id, "key": item.key, "seq": item.seq}
            if item.poison:
                payload["poison"] = True
            else:
                payload["pad"] = "x" * 64
            deadline = loop.time() + s.publish_timeout
            pause = 0.1
            while True:
                self._pub.attempts += 1
                try:
                    await bus.publish(self.topic, payload, key=item.key, message_id=item.id)
                    break
                except Exception as exc:
                    kind = type(exc).__name__
                    self._pub.errors[kind] = self._pub.errors.get(kind, 0) + 1
                    self._pub.retries += 1
                    if loop.time() + pause > deadline:
                        raise AssertionError(
                            f"{item.key}/{item.seq} not confirmed for {s.publish_timeout}s: {exc!r}"
                        ) from exc
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)
            self._pub.confirmed.append(item)
            async with self._progress:
                self._progress.notify_all()

    async def _handled_counts(self, db: Any) -> dict[str, int]:
        alo = await db.fetchval(
            "SELECT count(DISTINCT id) FROM rel_invocations WHERE run = $1 AND grp = 'alo'"
            " AND done",
            self.run_id,
        )
        eo = await db.fetchval(
            "SELECT count(DISTINCT id) FROM rel_effects WHERE run = $1", self.run_id
        )
        return {"alo": alo, "eo": eo}

    async def _ledger(self, db: Any, readers: dict[str, DeadLetterReader]) -> Ledger:
        confirmed = self._pub.confirmed
        rows = await db.fetch(
            "SELECT pos, grp, id, key, seq, pid, done, extract(epoch FROM at)::float8 AS at,"
            " extract(epoch FROM done_at)::float8 AS done_at"
            " FROM rel_invocations WHERE run = $1",
            self.run_id,
        )
        invocations: dict[str, list[Invocation]] = {g: [] for g in GROUPS}
        for row in rows:
            invocations[row["grp"]].append(parse_rows([row], Invocation)[0])
        effects = parse_rows(
            await db.fetch("SELECT pos, id, key, seq FROM rel_effects WHERE run = $1", self.run_id),
            Effect,
        )
        groups: list[GroupLedger] = [
            group_ledger("alo", confirmed, invocations["alo"], None, readers["alo"].ids),
            group_ledger("eo", confirmed, invocations["eo"], effects, readers["eo"].ids),
        ]
        drained = self.extra.pop("_drained_pid", None)
        if drained is not None:
            for g in GROUPS:
                self.extra[f"must_be_zero:redone_after_drain[{g}]"] = redone_after(
                    invocations[g], drained
                )
        if self._pub.errors:
            self.extra["publish_errors"] = dict(self._pub.errors)
        return Ledger(
            scenario=self.name,
            broker=self.broker,
            published=self.settings.messages,
            confirmed=len(confirmed),
            poison=sum(p.poison for p in confirmed),
            publish_retries=self._pub.retries,
            groups=groups,
            events=self.events,
            extra={"seed": self.seed, "run": self.run_id, **self.extra},
        )

    async def forget_rows(self) -> None:
        """Delete this run's ledger rows (a passing scenario's; a failing one keeps them for
        diagnosis, under ``run`` = `run_id`)."""
        db = await asyncpg.connect(self.dsn)
        try:
            await db.execute("DELETE FROM rel_invocations WHERE run = $1", self.run_id)
            await db.execute("DELETE FROM rel_effects WHERE run = $1", self.run_id)
        finally:
            await db.close()

    def logs(self) -> str:
        """Where the worker logs are, and their last lines (for a failing test's report)."""
        parts = [f"worker logs in {self.workdir}"]
        for worker in self.workers:
            parts.append(f"--- {worker.name} (pids {worker.pids}, exits {worker.exit_codes})")
            parts.append(worker.tail(15))
        return "\n".join(parts)


# Imported for its side effect only: the module must import cleanly without configuration
# (the workers import it by its package path, tests.reliability.ledger_app).
assert ledger_app.build_bus
