"""A rolling deploy from eventbus 0.1 to 0.2 against a real broker, and its ledger.

    deploy = RollingDeploy(broker="kafka", url=..., old=("0.1", Path(".../venv/bin/python")),
                           new=("0.2", Path(sys.executable)), workdir=tmp_path)
    ledger = await deploy.run()
    assert not ledger.problems()

Timeline (`RollingDeploy.run`):

1. start an old worker until it is live and stop it (the groups exist from the 0.1 era, as
   in a real deploy), then a new worker (`eventbus run upgrade_app:bus`, a real process) and
   wait until it is live (its startup hook writes a file);
2. publish the first ``first`` messages from this process (the repository's eventbus, 0.2),
   paced; meanwhile (`RollingDeploy._deploy`), once the new worker has retries waiting in the
   broker, an old worker joins its groups, so some of those retries move to it;
3. halfway through (the old worker live), start a second new worker; once it is live, SIGTERM
   the old worker (a graceful stop mid-stream: it is handling messages and has retries of its
   own waiting in the broker, which move to the new workers);
4. once the old worker has exited, publish the ``more`` messages;
5. wait until every message is handled or dead-lettered in both groups; SIGTERM the workers.

The publisher's bus also reads both groups' dead-letter queues (``@bus.consume``) all along.
Workers append one JSON line per handler attempt to a file of their own (`upgrade_app`); the
ledger (`analyse`) is computed from those files, the publisher's list and the dead letters.
Every wait has a deadline; every worker process is killed in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rel_harness import _delete_kafka, _delete_rabbit
from rel_ledger import Invocation, late_in_order, overlapping
from upgrade_app import GROUPS, MAX_ATTEMPTS, Job

from eventbus import Delivery, EventBus
from eventbus import headers as h

__all__ = ["Line", "Planned", "RollingDeploy", "UpgradeLedger", "analyse", "make_plan"]

HERE = Path(__file__).resolve().parent
APP = "upgrade_app:bus"
ROUTING_HEADERS = ("eventbus-target-group", "eventbus-not-before")
"""What 0.1 workers write on a retry through the broker to route it to one group (the 0.1 core
on every transport, the 0.1 Kafka adapter); in 0.2 they are the Kafka adapter's business."""
_NOT_INHERITED = ("EVENTBUS_URL", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")


# -- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    id: str
    key: str
    seq: int
    """Position among the messages of its key (publish order)."""
    fail: int = 0
    """Attempts that fail before one succeeds; -1: every attempt fails (retries run out)."""
    reject: bool = False

    @property
    def dead_letter_reason(self) -> str | None:
        """Why this message must end in the dead-letter queue, if it must."""
        if self.reject:
            return "rejected"
        if self.fail < 0:
            return "retries-exhausted"
        return None


def make_plan(count: int, keys: int, clean_keys: int, rng: random.Random) -> list[Planned]:
    """``count`` messages over ``keys`` keys, round robin. The first ``clean_keys`` keys never
    fail (their order is checked in the group with broker retries too); on the others a message
    fails once (30%), twice (10%), always (4%), or is rejected (5%)."""
    plan: list[Planned] = []
    for i in range(count):
        k = i % keys
        fail, reject = 0, False
        if k >= clean_keys:
            draw = rng.random()
            if draw < 0.30:
                fail = 1
            elif draw < 0.40:
                fail = 2
            elif draw < 0.44:
                fail = -1
            elif draw < 0.49:
                reject = True
        plan.append(Planned(uuid.uuid4().hex, f"k{k:02d}", i // keys, fail, reject))
    return plan


# -- worker processes ---------------------------------------------------------------------------


class WorkerProcess:
    """One `eventbus run upgrade_app:bus` process of a given eventbus version."""

    def __init__(self, name: str, label: str, python: Path, deploy: RollingDeploy) -> None:
        self.name = name
        self.label = label
        self.python = python
        self.deploy = deploy
        self.ledger = deploy.workdir / f"{name}.jsonl"
        self.log = deploy.workdir / f"{name}.log"
        self.ready_file = deploy.workdir / f"{name}.ready"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None

    def start(self) -> None:
        d = self.deploy
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED} | {
            "PYTHONPATH": str(HERE),  # upgrade_app only; never this checkout's src/
            "PYTHONUNBUFFERED": "1",
            "UPG_TOPIC": d.topic,
            "UPG_GROUP": d.group,
            "UPG_LEDGER": str(self.ledger),
            "UPG_LABEL": self.label,
            "UPG_READY_FILE": str(self.ready_file),
            "UPG_CONCURRENCY": str(d.concurrency),
            "UPG_HANDLER_MS": str(d.handler_ms),
        }
        command = [str(self.python), "-m", "eventbus", "run", APP, "--url", d.url]
        command += ["--graceful-timeout", str(d.graceful_timeout)]
        with open(self.log, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                command,
                cwd=d.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run must not reach it
            )
        d.event(f"{self.name} ({self.label}) started, pid {self.proc.pid}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while not self.ready_file.exists():
            if not self.alive():
                raise AssertionError(f"{self.name} exited before it was ready:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready within {within}s:\n{self.tail()}")
            await asyncio.sleep(0.1)
        self.deploy.event(f"{self.name} ready")

    async def terminate(self, within: float) -> int | None:
        """SIGTERM and wait up to ``within`` s: the exit code, None if it had to be killed."""
        assert self.proc is not None
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None and time.monotonic() - started < within:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.stop_seconds = time.monotonic() - started
        if self.proc.poll() is None:
            self.kill()
            self.deploy.event(f"{self.name} did not stop within {within}s: killed")
            return None
        self.exit_code = self.proc.returncode
        self.deploy.event(f"{self.name} exited {self.exit_code} in {self.stop_seconds:.1f}s")
        return self.exit_code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def lines(self) -> list[Line]:
        if not self.ledger.exists():
            return []
        return [Line.parse(text) for text in self.ledger.read_text().splitlines() if text]

    def tail(self, count: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-count:])
        except OSError:
            return "(no log)"


# -- the ledger ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One handler attempt, as a worker recorded it."""

    label: str
    version: str
    pid: int
    group: str
    id: str
    key: str
    seq: int
    attempt: int
    outcome: str
    start: float
    end: float
    headers: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Line:
        d = json.loads(text)
        return cls(
            d["v"],
            d["ver"],
            d["pid"],
            d["group"],
            d["id"],
            d["key"],
            d["seq"],
            d["attempt"],
            d["outcome"],
            d["start"],
            d["end"],
            tuple(d["hdrs"]),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    reason: str
    attempts: str
    original_group: str
    headers: tuple[str, ...]


@dataclass(slots=True)
class GroupResult:
    group: str
    handled: int = 0
    """Messages with at least one successful attempt."""
    attempts: int = 0
    duplicates: int = 0
    """Successful attempts beyond the first per message (at-least-once allows them)."""
    dead_lettered: int = 0
    dead_letter_copies: int = 0
    lost: list[str] = field(default_factory=list)
    unexpected_dead_letters: list[str] = field(default_factory=list)
    wrong_dead_letters: list[str] = field(default_factory=list)
    """Dead letters whose reason or attempt count is not what the plan says."""
    wrong_attempts: list[str] = field(default_factory=list)
    """Successes at another attempt than the plan's, attempts beyond the maximum."""
    crossings: Counter[str] = field(default_factory=Counter)
    """Messages whose next attempt ran in another worker version ("0.1->0.2": 0.1 failed it,
    0.2 ran the next attempt)."""
    by_version: Counter[str] = field(default_factory=Counter)
    """Successful attempts per worker version."""
    order_checked_keys: int = 0
    order_violations: int = 0
    order_sample: list[str] = field(default_factory=list)
    key_overlaps: int = 0
    headers_seen: Counter[str] = field(default_factory=Counter)
    """eventbus-* headers (other than the attempt) handlers saw: "version:header" -> attempts."""
    dead_letters_by_version: Counter[str] = field(default_factory=Counter)
    """Dead letters by the version of the worker that ran the message's last attempt (the one
    that wrote it), all read by this process's 0.2 bus."""
    dead_letter_headers: Counter[str] = field(default_factory=Counter)
    """Routing headers (`ROUTING_HEADERS`) in dead letters: "version:header" -> dead letters,
    by the version of the worker that ran the message's last attempt."""


@dataclass(slots=True)
class UpgradeLedger:
    broker: str
    versions: tuple[str, str]
    published: int
    designed_dead_letters: int
    groups: list[GroupResult]
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    old_stop: dict[str, int] = field(default_factory=dict)
    """The old worker's attempts around its SIGTERM: ``in_flight`` (started before it, ended
    after it: drained), ``started_after``."""
    logs: str = ""
    """Where the worker logs are, and their last lines."""

    def problems(self) -> list[str]:
        found: list[str] = []
        mixed = self.versions[0] != self.versions[1]
        for name, code in self.exit_codes.items():
            if code != 0:
                found.append(f"worker {name} exited with {code} after SIGTERM")
        for g in self.groups:
            where = f"group {g.group}"
            if g.lost:
                found.append(f"{where}: {len(g.lost)} lost, e.g. {g.lost[:5]}")
            if g.dead_lettered != self.designed_dead_letters:
                found.append(
                    f"{where}: {g.dead_lettered} dead-lettered, {self.designed_dead_letters} "
                    "designed to be"
                )
            for what in ("unexpected_dead_letters", "wrong_dead_letters", "wrong_attempts"):
                items = getattr(g, what)
                if items:
                    found.append(f"{where}: {len(items)} {what.replace('_', ' ')}: {items[:5]}")
            if g.order_violations:
                found.append(f"{where}: {g.order_violations} order violations {g.order_sample}")
            if g.key_overlaps:
                found.append(f"{where}: {g.key_overlaps} attempts overlapped one of their key")
            if mixed:
                for version in self.versions:
                    if not g.by_version[version]:
                        found.append(f"{where}: no message handled by a {version} worker")
        broker_group = next(g for g in self.groups if g.group == "broker")
        if mixed:
            old, new = self.versions
            for direction in (f"{old}->{new}", f"{new}->{old}"):
                if not broker_group.crossings[direction]:
                    found.append(
                        f"no retry through the broker went {direction}: the run did not test "
                        "that direction (no retry was waiting when partitions moved)"
                    )
        return found

    def routing_header_leaks(self) -> list[str]:
        """Routing headers that reached a handler or a dead letter: 0.1 strips them before
        its handlers and from its dead letters; 0.2 must not hand them on either (DESIGN 8:
        they are for one hop only)."""
        found = []
        for g in self.groups:
            for what, counts in (
                ("handler attempts saw", g.headers_seen),
                ("dead letters carry", g.dead_letter_headers),
            ):
                for name, count in sorted(counts.items()):
                    version, header = name.split(":", 1)
                    if header in ROUTING_HEADERS:
                        found.append(f"group {g.group}: {count} {version} {what} {header}")
        return found

    def summary(self) -> str:
        old, new = self.versions
        parts = [
            f"{self.broker}: {old} -> {new}, {self.published} published, "
            f"{self.designed_dead_letters} designed dead letters per group, {self.seconds:.1f}s"
        ]
        for g in self.groups:
            parts.append(
                f"  {g.group}: handled {g.handled}, dead-lettered {g.dead_lettered} "
                f"(copies {g.dead_letter_copies}), lost {len(g.lost)}, duplicates "
                f"{g.duplicates}, attempts {g.attempts}, successes by version "
                f"{dict(g.by_version)}, crossings {dict(g.crossings)}, order violations "
                f"{g.order_violations} over {g.order_checked_keys} keys, key overlaps "
                f"{g.key_overlaps}, dead letters by writer {dict(g.dead_letters_by_version)}; "
                f"routing headers seen by handlers "
                f"{dict(g.headers_seen)}, in dead letters {dict(g.dead_letter_headers)}"
            )
        parts.append(f"  old worker's attempts around its SIGTERM: {self.old_stop}")
        parts.append("  events: " + "; ".join(self.events))
        return "\n".join(parts)


def analyse(
    group: str,
    plan: list[Planned],
    lines: Iterable[Line],
    dead_letters: Iterable[DeadLetter],
    *,
    check_order_of: set[str],
) -> GroupResult:
    """The ledger of one group. ``check_order_of``: the keys whose per-key order must hold."""
    r = GroupResult(group)
    by_id = {p.id: p for p in plan}
    mine = sorted((line for line in lines if line.group == group), key=lambda x: x.start)
    r.attempts = len(mine)
    ok = Counter(line.id for line in mine if line.outcome == "ok")
    r.handled = len(ok)
    r.duplicates = sum(ok.values()) - len(ok)
    letters: dict[str, list[DeadLetter]] = defaultdict(list)
    for letter in dead_letters:
        letters[letter.id].append(letter)
    r.dead_letter_copies = sum(len(copies) for copies in letters.values())

    for p in plan:
        reason = p.dead_letter_reason
        if p.id not in ok and p.id not in letters:
            r.lost.append(f"{p.key}/{p.seq}")
        if reason is None:
            if p.id in letters:
                r.unexpected_dead_letters.append(f"{p.key}/{p.seq}")
            continue
        if p.id in ok:
            r.wrong_attempts.append(f"{p.key}/{p.seq} succeeded (plan: {reason})")
        if p.id in letters:
            attempts = "1" if p.reject else str(MAX_ATTEMPTS)
            for letter in letters[p.id]:
                if (letter.reason, letter.attempts) != (reason, attempts):
                    r.wrong_dead_letters.append(
                        f"{p.key}/{p.seq}: {letter.reason} after {letter.attempts} attempts "
                        f"(plan: {reason} after {attempts})"
                    )
                if not letter.original_group.endswith(f"-{group}"):
                    r.wrong_dead_letters.append(f"{p.key}/{p.seq}: group {letter.original_group}")
    r.dead_lettered = len(set(letters) & {p.id for p in plan if p.dead_letter_reason})
    r.unexpected_dead_letters += [i for i in letters if i not in by_id]
    last_label = {line.id: line.label for line in mine}  # `mine` is in start order
    for letter in dead_letters:
        r.dead_letters_by_version[last_label.get(letter.id, "?")] += 1
        for name in letter.headers:
            if name in ROUTING_HEADERS:
                r.dead_letter_headers[f"{last_label.get(letter.id, '?')}:{name}"] += 1

    attempts_of: dict[str, list[Line]] = defaultdict(list)
    for line in mine:
        attempts_of[line.id].append(line)
        if line.outcome == "ok":
            r.by_version[line.label] += 1
        for name in line.headers:
            r.headers_seen[f"{line.label}:{name}"] += 1
        p = by_id.get(line.id)
        if p is None:
            r.wrong_attempts.append(f"unknown id {line.id}")
            continue
        if line.attempt > MAX_ATTEMPTS:
            r.wrong_attempts.append(f"{p.key}/{p.seq}: attempt {line.attempt}")
        if line.outcome == "ok" and line.attempt != p.fail + 1:
            r.wrong_attempts.append(
                f"{p.key}/{p.seq} ({line.label}): succeeded at attempt {line.attempt}, "
                f"plan: {p.fail + 1}"
            )
    for runs in attempts_of.values():
        # The next attempt after a failure, wherever it ran (a redelivery may repeat one).
        seen: set[str] = set()
        for prev, nxt in itertools.pairwise(runs):
            if (
                prev.outcome == "fail"
                and nxt.attempt == prev.attempt + 1
                and prev.label != nxt.label
            ):
                seen.add(f"{prev.label}->{nxt.label}")
        r.crossings.update(seen)

    # Per-key order (publish order = seq) and one-at-a-time per key, as in the reliability
    # ledgers: walking a key's *first* attempts in start order; a redelivery is a duplicate.
    checked = [line for line in mine if line.key in check_order_of]
    r.order_checked_keys = len({line.key for line in checked})
    first: dict[str, Line] = {}
    for line in checked:
        first.setdefault(line.id, line)
    r.order_violations, r.order_sample = late_in_order(
        (line.start, line.key, line.seq) for line in first.values()
    )
    r.key_overlaps = overlapping(
        Invocation(i, line.id, line.key, line.seq, line.pid, True, line.start, line.end)
        for i, line in enumerate(checked)
    )
    return r


# -- the deploy ---------------------------------------------------------------------------------


class RollingDeploy:
    """See the module docstring. ``old``/``new``: the Python of each eventbus version."""

    def __init__(
        self,
        *,
        broker: str,
        url: str,
        old: tuple[str, Path],
        new: tuple[str, Path],
        workdir: Path,
        first: int = 360,
        more: int = 100,
        keys: int = 30,
        clean_keys: int = 10,
        rate: float = 40.0,
        concurrency: int = 4,
        handler_ms: float = 100.0,
        graceful_timeout: float = 10.0,
        settle_timeout: float = 60.0,
        seed: int | None = None,
        partitions: int = 1,
        per_key_order: bool = True,
    ) -> None:
        self.broker = broker
        self.url = url
        self.old, self.new = old, new
        self.workdir = workdir
        self.first, self.more = first, more
        self.keys, self.clean_keys = keys, clean_keys
        self.rate = rate
        self.concurrency = concurrency
        self.handler_ms = handler_ms
        self.graceful_timeout = graceful_timeout
        self.settle_timeout = settle_timeout
        self.seed = seed if seed is not None else random.randrange(2**32)
        self.partitions = partitions
        """RabbitMQ partition queues per group (the URL's ``partitions``), for the cleanup."""
        self.per_key_order = per_key_order
        """Whether the topology keeps a key in one process (Kafka, partitioned RabbitMQ groups):
        then per-key order and one-at-a-time are checked."""
        suffix = uuid.uuid4().hex[:8]
        self.topic = f"upg-{suffix}"
        self.group = f"upg-{suffix}"
        self.workers: list[WorkerProcess] = []
        self.events: list[str] = []
        self.dead_letters: dict[str, list[DeadLetter]] = {g: [] for g in GROUPS}
        self._started = 0.0
        self.sigterm_at = 0.0
        """When the old worker got its SIGTERM (epoch seconds, as in the ledger lines)."""
        self.published = 0
        """Messages published (confirmed) so far: the deploy steps wait on it."""
        workdir.mkdir(parents=True, exist_ok=True)

    def event(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self._started:.1f}s {text}")

    def dlq(self, group: str) -> str:
        return f"{self.topic}.{self.group}-{group}.dlq"

    def worker(self, name: str, version: tuple[str, Path]) -> WorkerProcess:
        w = WorkerProcess(name, version[0], version[1], self)
        self.workers.append(w)
        w.start()
        return w

    async def run(self) -> UpgradeLedger:
        self._started = time.monotonic()
        plan = make_plan(
            self.first + self.more, self.keys, self.clean_keys, random.Random(self.seed)
        )
        self.event(f"seed {self.seed}")
        try:
            exit_codes = await self._run(plan)
        finally:
            for w in self.workers:
                w.kill()
            await self._cleanup()
        lines = [line for w in self.workers for line in w.lines()]
        old = [line for w in self.workers if w.name == "old" for line in w.lines()]
        clean = {f"k{k:02d}" for k in range(self.clean_keys)} if self.per_key_order else set()
        every = {p.key for p in plan} if self.per_key_order else set()
        ledger = UpgradeLedger(
            broker=self.broker
            if self.broker == "kafka"
            else f"{self.broker}?partitions={self.partitions}",
            versions=(self.old[0], self.new[0]),
            published=len(plan),
            designed_dead_letters=sum(1 for p in plan if p.dead_letter_reason),
            groups=[
                analyse(
                    g,
                    plan,
                    lines,
                    self.dead_letters[g],
                    # Broker retries reorder a key (documented): only keys without failures.
                    check_order_of=clean if g == "broker" else every,
                )
                for g in GROUPS
            ],
            events=self.events,
            exit_codes=exit_codes,
            old_stop={
                "in_flight": sum(1 for x in old if x.start < self.sigterm_at < x.end),
                "started_after": sum(1 for x in old if x.start >= self.sigterm_at),
            },
        )
        ledger.seconds = time.monotonic() - self._started
        return ledger

    async def _run(self, plan: list[Planned]) -> dict[str, int | None]:
        # The groups exist from the 0.1 era before any 0.2 worker starts, as in a real deploy
        # (on RabbitMQ that decides a partitioned group's exchange type: docs/upgrading.md).
        exit_codes: dict[str, int | None] = {}
        made_by = self.worker("old-era", self.old)
        await made_by.wait_ready()
        self.event(f"groups made by {self.old[0]}")
        exit_codes[made_by.name] = await made_by.terminate(self.graceful_timeout + 20)
        new1 = self.worker("new1", self.new)
        await new1.wait_ready()
        bus = EventBus(self.url)
        for g in GROUPS:
            bus.consume(self.dlq(g), dead_letter=None)(self._dead_letter_reader(g))
        async with bus:
            first, more = plan[: self.first], plan[self.first :]
            deploying = asyncio.create_task(self._deploy(exit_codes))
            try:
                await self._publish_all(bus, first)
                self.event(f"published {len(first)}")
                await asyncio.wait_for(asyncio.shield(deploying), self.graceful_timeout + 90)
            finally:
                deploying.cancel()
            await self._publish_all(bus, more)
            self.event(f"published {len(more)} more")
            await self._settle(plan)
            await asyncio.sleep(1.0)  # late duplicates and dead-letter copies
            for w in self.workers:
                if w.alive():
                    exit_codes[w.name] = await w.terminate(self.graceful_timeout + 20)
        return exit_codes

    async def _deploy(self, exit_codes: dict[str, int | None]) -> None:
        """The rolling deploy, while the first messages flow. Once the new worker has retries
        waiting in the broker, the old worker joins its groups (as an old replica restarted
        mid-deploy would): the groups rebalance, and some of those retries move to it. Halfway
        through, a second new worker starts; once it is live, the old worker gets SIGTERM while
        messages still flow (a graceful stop: it drains what it is handling, and the retries it
        has waiting in the broker move to the new workers). Each join takes a rebalance
        (seconds on Kafka): the first messages are paced to outlast them."""
        await self._published(self.first // 6)
        old = self.worker("old", self.old)
        await old.wait_ready()
        await self._published(self.first // 2)
        new2 = self.worker("new2", self.new)
        await new2.wait_ready()
        self.event(f"SIGTERM old ({self.published} published)")
        self.sigterm_at = time.time()
        exit_codes[old.name] = await old.terminate(self.graceful_timeout + 20)

    async def _published(self, count: int) -> None:
        while self.published < count:  # noqa: ASYNC110 (the publisher's progress)
            await asyncio.sleep(0.02)

    async def _publish_all(self, bus: EventBus, items: list[Planned]) -> None:
        """Publish ``items`` in order, paced to `rate` (from the repository's eventbus)."""
        start = time.monotonic()
        for index, p in enumerate(items):
            delay = start + index / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            job = Job(run=self.topic, key=p.key, seq=p.seq, fail=p.fail, reject=p.reject)
            await bus.publish(self.topic, job.model_dump(), key=p.key, message_id=p.id)
            self.published += 1

    def _dead_letter_reader(self, group: str) -> Any:
        letters = self.dead_letters[group]

        async def read_dead_letter(job: Job, delivery: Delivery) -> None:
            m = delivery.message
            letters.append(
                DeadLetter(
                    m.id,
                    m.headers.get(h.DLQ_REASON, ""),
                    m.headers.get(h.ATTEMPTS, ""),
                    m.headers.get(h.ORIGINAL_GROUP, ""),
                    tuple(sorted(k for k in m.headers if k.startswith("eventbus-"))),
                )
            )

        return read_dead_letter

    async def _settle(self, plan: list[Planned]) -> None:
        """Wait until each group handled every good message and dead-lettered the others."""
        good = {p.id for p in plan if p.dead_letter_reason is None}
        bad = {p.id for p in plan if p.dead_letter_reason is not None}
        deadline = time.monotonic() + self.settle_timeout
        while True:
            lines = [line for w in self.workers for line in w.lines()]
            waiting = {}
            for g in GROUPS:
                ok = {line.id for line in lines if line.group == g and line.outcome == "ok"}
                lettered = {letter.id for letter in self.dead_letters[g]}
                waiting[g] = len(good - ok) + len(bad - lettered)
            if not any(waiting.values()):
                self.event("all handled or dead-lettered")
                return
            if time.monotonic() > deadline:
                self.event(f"gave up waiting: still waiting for {waiting}")
                return
            if not any(w.alive() for w in self.workers):
                self.event("no worker alive")
                return
            await asyncio.sleep(0.25)

    async def _cleanup(self) -> None:
        """Delete the topics, queues and exchanges of the run (best effort, bounded)."""
        names = [f"{self.topic}.{self.group}-{g}" for g in GROUPS]  # their .dlq too
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                if self.broker == "kafka":
                    await _delete_kafka(self.url, self.topic, names)
                else:
                    await _delete_rabbit(self.url, self.topic, names, self.partitions)
                    await _delete_rabbit_delays(self.url, names)

    def logs(self) -> str:
        parts = [f"worker logs in {self.workdir}"]
        for w in self.workers:
            parts.append(f"--- {w.name} ({w.label}) exit {w.exit_code}")
            parts.append(w.tail(15))
        return "\n".join(parts)


async def _delete_rabbit_delays(url: str, groups: list[str]) -> None:
    """The delay queues and exchanges broker retries went through, one per delay bucket and
    group (``eventbus.delay.<ms>.<topic>.<group>``): the retries here wait 1.5 s, so their
    buckets are at most 2.5 s."""
    import aiormq

    conn = await aiormq.connect(urlunsplit(urlsplit(url)._replace(query="")))
    try:
        channel = await conn.channel()
        for group in groups:
            for bucket in (50, 100, 250, 500, 1000, 2500):
                name = f"eventbus.delay.{bucket}.{group}"
                await channel.queue_delete(name)  # a missing queue or exchange is fine
                await channel.exchange_delete(name)
    finally:
        await conn.close()


RABBIT_PARTITIONS = 4
"""Partition queues per group on RabbitMQ (``?partitions=``): keys spread over the workers
with per-key order kept across processes."""
