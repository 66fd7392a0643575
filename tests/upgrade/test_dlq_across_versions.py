"""The ``eventbus dlq`` commands of one version on the other version's dead letters, on real
Kafka and RabbitMQ (docs/upgrading.md, "Rolling deploys").

A failing group and a bystander group per topology (Kafka; RabbitMQ with a queue per group;
RabbitMQ partitioned, ``?partitions=3``), made by an eventbus 0.1 worker as in a real deploy
(`upgrade_dlq_app`, a real ``eventbus run`` process of the ``release_0_1`` venv):

1. 0.1 writes, 0.2 redrives: the 0.1 worker dead-letters three messages (one rejected, two
   out of retries) and stops; the **0.2** CLI (``sys.executable -m eventbus dlq``) lists,
   shows and replays them; a 0.2 handler in this process gets them back, once each, at
   attempt 1, with their ids, keys, bodies, correlation ids and headers, and no ``eventbus-*``
   header but the attempt; the DLQ is then empty, and another group of the topic got none.
2. 0.2 writes, 0.1 redrives: the 0.2 handler dead-letters three more; the **0.1** CLI lists,
   shows and replays them; the same checks, and both versions' ``dlq list`` say 0.

Each CLI call is a subprocess given ``--url``, as an operator would run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from rel_harness import _delete_kafka, _delete_rabbit
from upgrade_dlq_app import MAX_ATTEMPTS, Item
from upgrade_release import OldRelease

from eventbus import Delivery, EventBus, Reject, RetryPolicy
from eventbus import headers as h
from eventbus.dlq import dlq_depths
from eventbus.transports.registry import transport_for_url

HERE = Path(__file__).resolve().parent
NEW_PYTHON = Path(sys.executable)
PARTITIONS = 3
WITHIN = 30.0
"""Seconds any one step may take."""
_NOT_INHERITED = ("EVENTBUS_URL", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
_ADAPTER_ROUTING = ("eventbus-target-group", "eventbus-not-before")


@dataclass(frozen=True, slots=True)
class Sent:
    id: str
    key: str
    item: Item
    tenant: str
    correlation_id: str

    @property
    def reason(self) -> str:
        return "rejected" if self.item.reject else "retries-exhausted"

    @property
    def attempts(self) -> str:
        return "1" if self.item.reject else str(MAX_ATTEMPTS)


@dataclass(slots=True)
class Handled:
    id: str
    key: str | None
    body: dict[str, Any]
    attempt: int
    headers: dict[str, str]
    correlation_id: str | None


@dataclass(slots=True)
class Scenario:
    broker: str
    url: str
    old_python: Path
    workdir: Path
    partitions: int = 1
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    handled: list[Handled] = field(default_factory=list)
    bystander: list[str] = field(default_factory=list)
    """Ids handled by another group of the topic (0.2), which must never get a replay."""
    failing: set[str] = field(default_factory=set)
    """Ids the 0.2 handler dead-letters (a `Reject` or a failure on every attempt)."""

    @property
    def topic(self) -> str:
        return f"dlqx-{self.suffix}"

    @property
    def group(self) -> str:
        return f"dlqx-{self.suffix}"

    @property
    def other_group(self) -> str:
        return f"{self.group}-bystander"

    @property
    def dlq(self) -> str:
        return f"{self.topic}.{self.group}.dlq"

    def batch(self, label: str) -> list[Sent]:
        return [
            Sent(
                f"{label}-{self.suffix}-{n}",
                f"{label}-key-{n}",
                Item(n=n, text=f"{label} item {n} é", reject=n == 0),
                f"tenant-{label}-{n}",
                f"corr-{label}-{n}",
            )
            for n in range(3)
        ]

    # -- processes ------------------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        return env | {"PYTHONUNBUFFERED": "1"} | extra

    async def cli(self, python: Path, *args: str) -> str:
        """``python -m eventbus dlq ARGS --url URL``: its output (exit code 0 asserted)."""
        command = [str(python), "-m", "eventbus", "dlq", *args, "--url", self.url]
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=self.workdir,
            env=self._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), WITHIN)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        what = f"`{python} -m eventbus dlq {' '.join(args)}`"
        assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{out!r}\n{err.decode()}"
        return out.decode()

    async def list_count(self, python: Path) -> int:
        lines = (await self.cli(python, "list", self.dlq)).splitlines()
        assert len(lines) == 1 and lines[0].split("\t")[0] == self.dlq, lines
        depth = lines[0].split("\t")[1]
        assert depth.isdigit(), f"{python} cannot tell the depth of {self.dlq}: {lines}"
        return int(depth)

    async def show(self, python: Path) -> list[dict[str, Any]]:
        out = await self.cli(python, "show", self.dlq, "--limit", "10")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    async def replay(self, python: Path) -> str:
        return (await self.cli(python, "replay", self.dlq)).strip()

    async def old_worker(self, publish: list[Sent]) -> None:
        """Run a 0.1 worker (it makes the group), publish ``publish`` from this process (0.2),
        wait until the worker dead-lettered them all, stop it with SIGTERM."""
        ready = self.workdir / "old.ready"
        log = self.workdir / "old.log"
        command = [str(self.old_python), "-m", "eventbus", "run", "upgrade_dlq_app:bus"]
        command += ["--url", self.url, "--graceful-timeout", "5"]
        env = self._env(
            PYTHONPATH=str(HERE),  # upgrade_dlq_app only; never this checkout's src/
            DLQX_TOPIC=self.topic,
            DLQX_GROUP=self.group,
            DLQX_BYSTANDER=self.other_group,
            DLQX_READY_FILE=str(ready),
        )
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:  # the child keeps its own descriptor
            proc = await asyncio.create_subprocess_exec(
                *command,
                cwd=self.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(out)
        try:

            def tail() -> str:
                return log.read_text(errors="replace")[-3000:]

            deadline = time.monotonic() + WITHIN
            while not ready.exists():
                assert proc.returncode is None, f"the 0.1 worker exited:\n{tail()}"
                assert time.monotonic() < deadline, f"the 0.1 worker is not ready:\n{tail()}"
                await asyncio.sleep(0.1)
            async with EventBus(self.url) as publisher:
                for s in publish:
                    await self._publish(publisher, s)
            await self.wait_depth(len(publish), tail)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), WITHIN)
            assert code == 0, f"the 0.1 worker exited {code} after SIGTERM:\n{tail()}"
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def _publish(self, bus: EventBus, s: Sent) -> None:
        await bus.publish(
            self.topic,
            s.item.model_dump(),
            key=s.key,
            headers={"tenant": s.tenant},
            message_id=s.id,
            correlation_id=s.correlation_id,
        )

    async def wait_depth(self, count: int, tail: Any = lambda: "") -> None:
        transport = transport_for_url(self.url)
        await transport.connect()
        try:
            deadline = time.monotonic() + WITHIN
            while True:
                depth = (await dlq_depths(transport, [self.dlq]))[self.dlq] or 0
                if depth >= count:
                    assert depth == count, f"{depth} dead letters, {count} expected"
                    return
                assert time.monotonic() < deadline, f"{depth}/{count} dead letters\n{tail()}"
                await asyncio.sleep(0.2)
        finally:
            await transport.close()

    async def wait_handled(self, ids: set[str]) -> None:
        deadline = time.monotonic() + WITHIN
        while not ids <= {x.id for x in self.handled}:
            assert time.monotonic() < deadline, f"not handled: {ids - {x.id for x in self.handled}}"
            await asyncio.sleep(0.1)

    # -- the 0.2 side ---------------------------------------------------------------------------

    def new_bus(self) -> tuple[EventBus, asyncio.Event]:
        bus = EventBus(self.url, graceful_timeout=5.0)
        live = asyncio.Event()

        @bus.subscribe(
            self.topic,
            group=self.group,
            retry=RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_delay=0.01, max_delay=0.05),
        )
        async def handle(item: Item, delivery: Delivery) -> None:
            m = delivery.message
            if m.id in self.failing:
                if item.reject:
                    raise Reject(f"item {item.n} rejected by design")
                raise RuntimeError(f"item {item.n} fails attempt {delivery.attempt} by design")
            self.handled.append(
                Handled(
                    m.id,
                    m.key,
                    json.loads(m.body),
                    delivery.attempt,
                    dict(m.headers),
                    m.correlation_id,
                )
            )

        @bus.subscribe(self.topic, group=self.other_group)
        async def accept(item: Item, delivery: Delivery) -> None:
            self.bystander.append(delivery.message.id)

        @bus.on_startup
        async def started() -> None:
            live.set()

        return bus, live

    # -- checks ---------------------------------------------------------------------------------

    def check_shown(self, shown: list[dict[str, Any]], sent: list[Sent], writer: str) -> None:
        """What ``dlq show`` printed: the dead letters of ``sent``, written by ``writer``."""
        by_id = {s.id: s for s in sent}
        assert sorted(x["id"] for x in shown) == sorted(by_id), shown
        for letter in shown:
            s = by_id[letter["id"]]
            hdrs: dict[str, str] = letter["headers"]
            where = f"{writer} dead letter {s.id}: {hdrs}"
            assert letter["key"] == s.key, where
            assert letter["body"] == s.item.model_dump(), where
            assert hdrs["tenant"] == s.tenant, where
            assert hdrs[h.DLQ_REASON] == s.reason, where
            assert hdrs[h.ATTEMPTS] == s.attempts, where
            assert hdrs[h.ORIGINAL_TOPIC] == self.topic, where
            assert hdrs[h.ORIGINAL_GROUP] == self.group, where
            assert hdrs[h.ORIGINAL_KIND] == "topic", where
            assert hdrs[h.FAILED_AT], where
            error = (
                "Reject" if s.item.reject else {"0.1": "PlannedFailure"}.get(writer, "RuntimeError")
            )
            assert hdrs[h.ERROR_TYPE].rsplit(".", 1)[-1] == error, where
            assert f"item {s.item.n} " in hdrs[h.ERROR_MESSAGE], where
            assert error in hdrs[h.ERROR_TRACEBACK], where
            if self.broker == "kafka":  # where the message was: transport-specific
                assert hdrs[h.ORIGINAL_PARTITION].isdigit(), where
                assert hdrs[h.ORIGINAL_OFFSET].isdigit(), where
            else:
                queues = [f"{self.topic}.{self.group}"]
                if self.partitions > 1:
                    queues = [f"{queues[0]}.{i}" for i in range(self.partitions)]
                assert hdrs["eventbus-original-queue"] in queues, where
            assert not any(k in hdrs for k in _ADAPTER_ROUTING), where

    def check_replayed(self, sent: list[Sent]) -> None:
        """The replayed messages reached the 0.2 handler of the failed group once each, as
        published, with a fresh attempt count and no dead-letter or routing header."""
        ids = {s.id for s in sent}
        got = [x for x in self.handled if x.id in ids]
        assert sorted(x.id for x in got) == sorted(ids), got
        for x in got:
            s = next(s for s in sent if s.id == x.id)
            assert (x.key, x.body, x.correlation_id) == (
                s.key,
                s.item.model_dump(),
                s.correlation_id,
            ), x
            assert x.attempt == 1, x
            assert x.headers.get("tenant") == s.tenant, x
            assert {k for k in x.headers if k.startswith("eventbus-")} <= {h.ATTEMPT}, x
            assert x.headers.get(h.ATTEMPT, "1") == "1", x

    # -- the scenario ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self._cleanup()

    async def _run(self) -> None:
        old, new = self.old_python, NEW_PYTHON
        written_by_old = self.batch("old")
        await self.old_worker(written_by_old)

        bus, live = self.new_bus()
        async with bus:
            await asyncio.wait_for(live.wait(), WITHIN)

            # 1. 0.1's dead letters, redriven by the 0.2 CLI.
            assert await self.list_count(new) == 3
            self.check_shown(await self.show(new), written_by_old, "0.1")
            assert await self.replay(new) == "replayed 3"
            await self.wait_handled({s.id for s in written_by_old})
            assert await self.list_count(new) == 0

            # 2. 0.2's dead letters, redriven by the 0.1 CLI.
            written_by_new = self.batch("new")
            self.failing |= {s.id for s in written_by_new}
            for s in written_by_new:
                await self._publish(bus, s)
            await self.wait_depth(3)
            assert await self.list_count(old) == 3
            self.check_shown(await self.show(old), written_by_new, "0.2")
            self.failing.clear()
            assert await self.replay(old) == "replayed 3"
            await self.wait_handled({s.id for s in written_by_new})
            assert await self.list_count(old) == 0
            assert await self.list_count(new) == 0
            await asyncio.sleep(0.5)  # a replayed message handled twice would show by now

        self.check_replayed(written_by_old)
        self.check_replayed(written_by_new)
        assert len(self.handled) == 6, self.handled
        # The other group (made by 0.1, which handled the first batch) got the second batch
        # as published, once, and none of the six replays.
        assert sorted(self.bystander) == sorted(s.id for s in written_by_new), self.bystander

    async def _cleanup(self) -> None:
        names = [f"{self.topic}.{g}" for g in (self.group, self.other_group)]
        with contextlib.suppress(Exception):
            async with asyncio.timeout(20):
                if self.broker == "kafka":
                    await _delete_kafka(self.url, self.topic, names)
                else:
                    await _delete_rabbit(self.url, self.topic, names, self.partitions)


def _with_partitions(url: str, partitions: int) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, f"partitions={partitions}") if q)
    return urlunsplit(parts._replace(query=query))


@pytest.mark.kafka
def test_kafka_dlq_commands_across_versions(
    kafka_url: str, release_0_1: OldRelease, tmp_path: Path
) -> None:
    asyncio.run(Scenario("kafka", kafka_url, release_0_1.python, tmp_path).run())


@pytest.mark.amqp
def test_rabbitmq_dlq_commands_across_versions(
    amqp_url: str, release_0_1: OldRelease, tmp_path: Path
) -> None:
    asyncio.run(Scenario("rabbitmq", amqp_url, release_0_1.python, tmp_path).run())


@pytest.mark.amqp
def test_rabbitmq_partitioned_dlq_commands_across_versions(
    amqp_url: str, release_0_1: OldRelease, tmp_path: Path
) -> None:
    url = _with_partitions(amqp_url, PARTITIONS)
    scenario = Scenario("rabbitmq", url, release_0_1.python, tmp_path, partitions=PARTITIONS)
    asyncio.run(scenario.run())
